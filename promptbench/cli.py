"""``promptbench`` command line: ``train`` (one cell or a Hydra multirun), ``list``, and more.

    promptbench train method=coop dataset=btmri shots=16 seed=1 backbone=biomedclip
    promptbench train -m method=zeroshot,coop seed=1,2,3
"""

from __future__ import annotations

import logging
import sys

from promptbench.config import CONFIG_DIR

USAGE = """usage: promptbench <command> [overrides...]

commands:
  train   run one experiment cell (Hydra overrides; -m for a multirun grid)
  list    list available backbones, methods, datasets and experiments
"""


def _train(argv: list[str]) -> int:
    import hydra
    from omegaconf import DictConfig

    @hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
    def main(cfg: DictConfig) -> None:
        from promptbench.engine.results import is_done, result_path
        from promptbench.engine.run import run

        if cfg.get("skip_done") and is_done(cfg):
            print(f"skip (done): {result_path(cfg)}")
            return
        try:
            result = run(cfg)
        except Exception as err:  # noqa: BLE001 - recorded in result.json; one line for the user
            print(f"FAILED {result_path(cfg)}: {type(err).__name__}: {err}".splitlines()[0], file=sys.stderr)
            if not cfg.get("continue_on_error"):
                raise SystemExit(1) from None
            return
        metrics = result["metrics"]
        shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.endswith("/acc"))
        print(f"done: {shown}  ->  {result_path(cfg)}")

    sys.argv = [f"{sys.argv[0]} train", *argv]
    main()
    return 0


def _list(_: list[str]) -> int:
    from promptbench.methods import load_all

    for group in ("backbone", "method", "dataset", "protocol", "experiment"):
        names = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml") if not p.stem.startswith("_"))
        print(f"{group + ':':12s} {' '.join(names)}")
    print(f"{'registered:':12s} {' '.join(sorted(load_all()))}")
    return 0


COMMANDS = {"train": _train, "list": _list}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"unknown command '{command}'.\n{USAGE}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    return COMMANDS[command](rest)


if __name__ == "__main__":
    sys.exit(main())
