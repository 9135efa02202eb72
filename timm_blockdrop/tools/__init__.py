"""Floor 3, tools around trained models: ``blockdrop eval | bench | publish`` and the Hub. May import every floor."""
