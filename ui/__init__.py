"""The Tkinter app: the window (``ui.window``) over a display-free controller (``ui.controller``)."""
