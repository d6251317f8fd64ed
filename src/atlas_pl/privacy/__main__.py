"""`python -m atlas_pl.privacy`: the privacy evaluation's Hydra app (conf/privacy.yaml).

As in the training app, only hydra/omegaconf load before the settings are checked: a bad split, attack
or job dir is refused in about a second.
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig, OmegaConf

from atlas_pl.__main__ import CONFIG_DIR, _quiet_third_party

log = logging.getLogger("atlas_pl.privacy")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="privacy")
def app(cfg: DictConfig) -> None:
    from atlas_pl.errors import user_errors

    with user_errors("atlas_pl.privacy"):
        from atlas_pl.privacy.config import privacy_settings

        resolved = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(resolved, dict)
        settings = privacy_settings({str(k): v for k, v in resolved.items()})
        _quiet_third_party()
        from atlas_pl.privacy.app import run_privacy
        from atlas_pl.privacy.report import console_table

        result = run_privacy(settings)
        print(console_table(result))
        log.info("privacy: wrote %s", settings.out_dir / "privacy.json")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
