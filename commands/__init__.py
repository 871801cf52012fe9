"""The command lines behind the scripts (``process_image.py``, ``train.py``, ``infer.py``,
``evaluate.py``, ``export.py``, ``gui.py``): each module's ``main(argv)`` parses the arguments
(its docstring is the ``--help`` page) and calls the library packages. The scripts at the top
level only run these, so tests and tools call ``commands.NAME.main`` without importing a script.
"""
