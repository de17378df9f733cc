"""One SAE training run, planned once: `TrainPlan` is the command line of `interp sae train` as a
dataclass (built once, from the CLI or Python, and checked once), and `Layout` says how the ranks
share the work, so which trainer trains each SAE.

`TrainPlan.check` holds every refusal that needs neither the model nor the data, each written once;
`saes.run.run_plan` then loads the model, resolves the points, picks the source (a store or a
streamed harvest) and the folders, and hands them to `saes.train`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from interp.errors import InterpError

ARCHS_WITH_K = ("topk", "batchtopk")
DEFAULT_TOKENS = 1_000_000  # training tokens when neither --tokens nor a store says how many


@dataclass(frozen=True)
class Layout:
    """How the ranks under torchrun share an SAE run (one process: every kind is one rank alone).

    - `replicated` (the default): every rank holds the whole SAE and trains on its slice of each
      global batch (`saes.data_parallel`).
    - `sharded` (`shard_latents > 1`, topk only): each group of `shard_latents` ranks holds one SAE
      split over its latents; the groups are data parallel (`saes.sharded_trainer`).
    - `points` (`distribute_points`): each rank trains the SAEs of its own hook points alone.
    """

    shard_latents: int = 1
    distribute_points: bool = False

    @property
    def kind(self) -> str:
        return "sharded" if self.shard_latents > 1 else "points" if self.distribute_points else "replicated"

    def data_ranks(self, world_size: int) -> int:
        """Ranks that split each global batch between them."""
        return 1 if self.distribute_points else world_size // self.shard_latents

    def check(self, world_size: int, batch_size: int, arch: str, d_sae: int | None = None, autocast: str | None = None) -> None:
        """InterpError (one line) when `world_size` ranks cannot train an `arch` SAE of `d_sae` latents (None:
        not known yet) this way, on global batches of `batch_size` rows."""
        if self.shard_latents < 1:
            raise InterpError(f"--shard-latents must be positive, got {self.shard_latents}")
        if self.distribute_points and self.shard_latents > 1:
            raise InterpError("--distribute-points and --shard-latents cannot be combined (not supported): drop one of them")
        if autocast is not None and self.shard_latents > 1:
            raise InterpError("--autocast is not supported with --shard-latents: drop one of them")
        n = self.shard_latents
        if n > 1:
            if arch != "topk":
                raise InterpError(f"--shard-latents shards topk SAEs only, not --arch {arch}: use --arch topk or drop --shard-latents")
            if d_sae is not None and d_sae % n:
                raise InterpError(f"--shard-latents {n} does not divide the SAE's {d_sae} latents: choose a --width that is a "
                                  f"multiple of {n} (e.g. {d_sae + n - d_sae % n})")
            if world_size % n:
                were = "was" if world_size == 1 else "were"
                raise InterpError(f"--shard-latents {n} needs a multiple of {n} ranks, but {world_size} {were} launched: "
                                  f"start it with torchrun --nproc-per-node {n} (or a multiple of {n})")
        dp = self.data_ranks(world_size)
        if batch_size % dp:
            raise InterpError(f"--batch-tokens {batch_size} (tokens per step over all ranks) does not split evenly over "
                              f"{dp} {'data ' if n > 1 else ''}ranks: choose a multiple of {dp}")


@dataclass
class TrainPlan:
    """What to train, on what, where: the options of `interp sae train` (see its --help for each).

    `hooks` names the points (a name, a selector, or several joined by ';'; None: `site` at `layer`, the
    middle layer by default). Several points train one SAE each from one harvest, in `out/<point>`.
    `data=None` trains on a store's own text (`saes.sources.store_text`), else on the built-in corpus.
    `tokens=None` trains on every token a `store` holds (`DEFAULT_TOKENS` when streaming or harvesting a
    new store); asking for more than a store holds harvests the rest only with `extend`.
    """

    out: Path
    model: str = "default"
    hooks: str | None = None
    layer: int | str | None = None
    site: str = "resid_post"
    arch: str = "topk"
    k: int = 32
    l1: float = 5.0
    l0: float = 1.0
    width: int | None = None
    expansion: int = 8
    tokens: int | None = None
    batch_tokens: int = 4096
    lr: float | None = None
    data: str | None = None
    text_field: str | None = None
    ctx_len: int = 128
    shuffle_tokens: int = 2**17  # streaming: rows are shuffled within blocks of this many tokens
    store: Path | None = None
    store_dtype: str = "float32"
    extend: bool = False
    resume: bool = False
    overwrite: bool = False
    checkpoint_minutes: float = 10.0
    checkpoint_steps: int = 0
    eval_tokens: int = 10_000
    seed: int = 0
    device: str | None = None
    dist_timeout: float = 600.0
    dtype: str = "float32"
    device_map: str | None = None
    autocast: str | None = None
    layout: Layout = field(default_factory=Layout)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.store = Path(self.store) if self.store is not None else None

    def training_tokens(self, stored: int | None) -> int:
        """Tokens to train on, given what the store holds (`stored`; None: no store yet, or streaming)."""
        if self.tokens is not None:
            return self.tokens
        return stored if stored is not None else DEFAULT_TOKENS

    def d_sae(self, d_in: int) -> int:
        """The width of an SAE reading `d_in`-wide activations: `width`, else `expansion * d_in`."""
        return self.width if self.width is not None else self.expansion * d_in

    def check(self, world_size: int) -> None:
        """Refuse (InterpError, one line) what cannot run, before the model loads or anything is written."""
        from interp.models import resolve_dtype
        from saes.checkpoint import resumable
        from saes.run_folder import check_out_dir
        from saes.sources import check_store_folder
        from saes.trainer import autocast_dtype

        for value, flag in ((self.tokens, "--tokens"), (self.batch_tokens, "--batch-tokens"), (self.expansion, "--expansion"),
                            (self.shuffle_tokens, "--shuffle-tokens")):
            if value is not None and value <= 0:
                raise InterpError(f"{flag} must be positive, got {value}")
        if self.eval_tokens < 0:
            raise InterpError(f"--eval-tokens must be 0 or positive, got {self.eval_tokens}")
        if self.checkpoint_minutes < 0 or self.checkpoint_steps < 0:
            raise InterpError("--checkpoint-minutes and --checkpoint-steps must be 0 (off) or positive")
        autocast_dtype(self.autocast)  # an unknown name is refused here
        self.layout.check(world_size, self.batch_tokens, self.arch, self.width, self.autocast)
        if self.device_map is not None and world_size > 1:
            raise InterpError("--device-map spreads one model over every GPU, so it runs in one process: start it without torchrun")
        resolve_dtype(self.store_dtype)
        check_out_dir(self.out, self.resume, self.overwrite)
        if self.resume and not self.layout.distribute_points:
            resumable(self.out, self.layout.shard_latents)  # a checkpoint of another latent sharding is refused here
        if self.store is not None:
            check_store_folder(self.store)
