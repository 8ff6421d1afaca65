"""``python -m waitroom_cli``: the ``waitroom`` command."""

from waitroom_cli.main import main

if __name__ == "__main__":
    main()
