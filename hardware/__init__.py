"""Device facts and live resource figures, read from /proc, /sys and psutil; no UI imports."""
