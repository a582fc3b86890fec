"""Reusable widgets of the app: device panel, navigation, job bar, gate banner, tables and charts."""
