"""One configuration for the networks, the losses and the optimisers.

Two presets: `ModelConfig.paper()` is the 256-px model of Zakharov et al. (2019);
`ModelConfig.small()` is a 128-px, narrower model that trains (slowly, and to a modest quality) on a
CPU, for tests and demonstrations. The loss weights and optimiser settings are the paper's in both.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of Embedder, Generator and Discriminator, loss weights and optimiser settings."""

    # --- sizes -----------------------------------------------------------------------------------
    image_size: int = 256  # side of the square images and sketches, pixels (a power of two, >= 32)
    base_channels: int = 64  # channels of the first (highest-resolution) block of every network
    max_channels: int = 512  # no hidden block has more channels than this
    embed_dim: int = 512  # length of the embedding ê and of the discriminator's W columns
    generator_down_blocks: int = 4  # downsampling residual blocks of G (256 px -> 16 px in the paper)
    generator_res_blocks: int = 5  # residual blocks with AdaIN at G's bottleneck
    attention_resolution: int = 32  # feature-map side at which the self-attention layers sit

    # --- episodes --------------------------------------------------------------------------------
    shots: int = 8  # K: frames per video given to the embedder in one meta-learning episode

    # --- loss weights (the paper's, Section 3.2 / 4) ----------------------------------------------
    w_vgg19: float = 1e-2  # content loss on VGG19 (ImageNet) activations
    w_vggface: float = 2e-3  # content loss on VGGFace activations
    w_adv: float = 1.0  # hinge realism term -D(x^, y, i) in the generator's loss
    w_fm: float = 10.0  # feature matching on the discriminator's block activations
    w_mch: float = 80.0  # embedding match ||ê_i - W_i||_1
    # Deviation from the paper: a pixel L1 reconstruction term, used only when no content network
    # (no VGG weights) is available, so that the CPU demonstration learns without pretrained nets.
    w_l1: float = 10.0

    # --- optimisers (the paper's: Adam; 2 discriminator updates per generator update) ------------
    lr_g: float = 5e-5  # learning rate of the embedder and generator (and of ψ' when fine-tuning)
    lr_d: float = 2e-4  # learning rate of the discriminator
    beta1: float = 0.0  # Adam beta1 (SAGAN's, which the paper follows for the update schedule)
    beta2: float = 0.999  # Adam beta2
    d_steps: int = 2  # discriminator updates per embedder/generator update

    # ---------------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        log2 = math.log2(self.image_size)
        if self.image_size < 32 or log2 != int(log2):
            raise ValueError(f"image_size must be a power of two >= 32, got {self.image_size}")
        if self.image_size >> self.generator_down_blocks < 4:
            raise ValueError("too many generator_down_blocks for the image size")
        if self.shots < 1:
            raise ValueError("shots must be at least 1")

    @classmethod
    def paper(cls) -> "ModelConfig":
        """The paper's 256-px model."""
        return cls()

    @classmethod
    def small(cls) -> "ModelConfig":
        """A 128-px model of reduced width that trains on a CPU (for tests and demonstrations)."""
        return cls(image_size=128, base_channels=32, max_channels=256, generator_down_blocks=3,
                   generator_res_blocks=2, attention_resolution=32)

    @classmethod
    def named(cls, name: str) -> "ModelConfig":
        """`small` or `paper`."""
        presets = {"small": cls.small, "paper": cls.paper}
        if name not in presets:
            raise ValueError(f"unknown config '{name}' (choose from {', '.join(presets)})")
        return presets[name]()

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        """The config saved by `to_json`; unknown keys are an error, missing keys take defaults."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("config JSON is not an object")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        return cls(**data)

    def replace(self, **changes) -> "ModelConfig":
        data = asdict(self)
        data.update(changes)
        return ModelConfig(**data)

    # --- derived sizes ---------------------------------------------------------------------------
    def encoder_channels(self) -> list[int]:
        """Output channels of the embedder's (and discriminator's) downsampling blocks.

        The blocks halve the resolution down to 4x4; the last one outputs `embed_dim` channels.
        """
        n = int(math.log2(self.image_size // 4))
        chans = [min(self.base_channels * 2 ** i, self.max_channels) for i in range(n - 1)]
        return chans + [self.embed_dim]

    def generator_down_channels(self) -> list[int]:
        """Output channels of the generator's downsampling blocks."""
        return [min(self.base_channels * 2 ** i, self.max_channels)
                for i in range(self.generator_down_blocks)]

    def generator_up_channels(self) -> list[int]:
        """Output channels of the generator's upsampling blocks (mirror of the down path)."""
        down = self.generator_down_channels()
        return list(reversed(down[:-1])) + [self.base_channels]
