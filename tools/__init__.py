"""The toolkit's command lines: ``python tools/NAME.py`` in a source checkout; installed, the package
``resnet_tools``, whose ``cli`` functions are the console scripts of pyproject.toml
(``resnet-train-det`` runs ``tools/train_det.py``). Each module is a thin layer over the library."""
