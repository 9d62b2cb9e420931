"""``python -m onnxcomp``: the same command line as the ``onnxcomp`` script."""
from onnxcomp.cli import main

if __name__ == "__main__":
    main()
