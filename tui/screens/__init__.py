"""The app's screens: Models, Compress, Probe, Compare, History, and the dialogs they open."""
