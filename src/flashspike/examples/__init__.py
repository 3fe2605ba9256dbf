"""Runnable examples.

- :mod:`flashspike.examples.conv_fashion_mnist`: SpikingJelly's convolutional Fashion-MNIST tutorial,
  trained on multi-step neurons (``python -m flashspike.examples.conv_fashion_mnist --help``). Beside
  it: its flags (``flags``), the training machinery (``trainer``, whose steps are
  :class:`flashspike.CapturedStep`), the run's folder and record (``run_log``) and checkpoint files
  (``checkpoint``). Its network is the library's (:mod:`flashspike.model.csnn`), as is its place among
  torchrun's processes (:mod:`flashspike.cluster`), which the training benchmark uses too.
- :mod:`flashspike.examples.fashion_mnist`: the IDX reader and the data set's location and download.
- :mod:`flashspike.examples.plot`: accuracy and loss curves of one or more runs.

They need the ``examples`` extra (numpy, tqdm, tensorboard, matplotlib); each package is imported
only where it is used, and a missing one is reported with its install command.
"""
