"""``python -m toptune.tiny MODEL_TYPE OUT_DIR``: a seeded tiny checkpoint of any supported family (the
command's name is part of the interface); the code is :mod:`toptune.model.tiny`."""

from toptune.model.tiny import main

if __name__ == "__main__":
    main()
