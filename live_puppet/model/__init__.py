"""The neural talking-head model of Zakharov et al. (2019): Embedder, Generator, Discriminator.

Pure torch: nothing here imports the rest of the project.
"""

from live_puppet.model.blocks import AdaIN
from live_puppet.model.config import ModelConfig
from live_puppet.model.discriminator import Discriminator
from live_puppet.model.embedder import Embedder
from live_puppet.model.generator import Generator

__all__ = ["AdaIN", "ModelConfig", "Embedder", "Generator", "Discriminator"]
