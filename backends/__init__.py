"""Everything that knows about Keras, KerasHub and TensorFlow devices.

Importing this package is cheap: the modules that import TensorFlow
(`keras_gpt2`, `generation`, `scoring`, `training`, `devices`) are only
imported by the commands that need them.
"""

import os

# TensorFlow's C++ start-up chatter (CUDA probing, CPU features) is noise for CLI users.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
