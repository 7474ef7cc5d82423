"""The operator's command line, run as a subprocess like an operator would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def cli(tmp_path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, IMAGEGATE_DATA_DIR=str(tmp_path), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "imagegate.cli", *args], env=env, capture_output=True, text=True, check=check, timeout=120)


def test_keys_lifecycle(tmp_path: Path) -> None:
    created = cli(tmp_path, "keys", "create", "--balance", "2.5", "--name", "ops").stdout.strip().splitlines()
    key = created[-1]
    assert key.startswith("ig_") and len(key) > 30
    assert any(line.startswith("webhook secret: whsec_") for line in created)
    assert "2.750000 USD" in cli(tmp_path, "keys", "topup", key, "0.25").stdout
    listed = cli(tmp_path, "keys", "list").stdout
    assert "ops" in listed and "2.750000 USD" in listed and "active" in listed and key not in listed
    key_id = next(line for line in created if line.startswith("id: ")).split(": ")[1]
    assert "disabled" in cli(tmp_path, "keys", "disable", key_id).stdout
    assert "disabled" in cli(tmp_path, "keys", "list").stdout
    assert "enabled" in cli(tmp_path, "keys", "enable", key).stdout
    rotated = cli(tmp_path, "keys", "rotate-webhook-secret", key).stdout.strip()
    assert rotated.startswith("whsec_")
    missing = cli(tmp_path, "keys", "topup", "ig_nope", "1", check=False)
    assert missing.returncode == 1 and "no API key" in missing.stderr
    bad = cli(tmp_path, "keys", "create", "--balance", "lots", check=False)
    assert bad.returncode == 2 and "invalid amount" in bad.stderr


def test_models_list_disable_enable(tmp_path: Path) -> None:
    listed = cli(tmp_path, "models", "list").stdout.splitlines()
    from imagegate.catalog import MODELS

    assert len(listed) == len(MODELS)
    row = next(line for line in listed if line.startswith("flux-dev\t"))
    assert "\tenabled\t$0.025\tflux1.text-to-image\tblack-forest-labs/FLUX.1-dev\t/flux-dev/v1/dev/textToImage" in row
    cli(tmp_path, "models", "disable", "flux-dev")
    assert any(line.startswith("flux-dev\tdisabled") for line in cli(tmp_path, "models", "list").stdout.splitlines())
    cli(tmp_path, "models", "enable", "flux-dev")
    assert any(line.startswith("flux-dev\tenabled") for line in cli(tmp_path, "models", "list").stdout.splitlines())
    unknown = cli(tmp_path, "models", "disable", "nope", check=False)
    assert unknown.returncode == 2


def test_keys_and_models_commands_leave_an_audit_trail(tmp_path: Path) -> None:
    created = cli(tmp_path, "keys", "create", "--balance", "1", "--name", "ops").stdout.strip().splitlines()
    key, key_id = created[-1], created[0].removeprefix("id: ")
    cli(tmp_path, "keys", "topup", key[:10], "0.5")
    cli(tmp_path, "keys", "disable", key_id)
    cli(tmp_path, "keys", "enable", key)
    cli(tmp_path, "keys", "rotate-webhook-secret", key_id)
    cli(tmp_path, "models", "disable", "flux-dev")
    assert cli(tmp_path, "models", "price", "flux-dev", "0.03").stdout.strip() == "flux-dev price: $0.03 per image"
    row = next(line for line in cli(tmp_path, "models", "list").stdout.splitlines() if line.startswith("flux-dev\t"))
    assert row.startswith("flux-dev\tdisabled\t$0.03\t")
    assert cli(tmp_path, "models", "price", "flux-dev", "--clear").stdout.strip() == "flux-dev price: cleared"
    for bad in (["keys", "topup", key_id, "-1"], ["models", "price", "flux-dev", "NaN"]):
        refused = cli(tmp_path, *bad, check=False)
        assert refused.returncode == 2 and "invalid amount" in refused.stderr
    assert cli(tmp_path, "models", "price", "flux-dev", check=False).returncode == 2

    from imagegate.jobs.audit import AuditFilter
    from imagegate.jobs.store import JobStore

    store = JobStore(f"sqlite:///{tmp_path / 'imagegate.db'}")
    try:
        rows = list(reversed(store.audit.page(AuditFilter(), limit=50).items))
        assert store.keys.get(key_id).balance_micros == 1_500_000
    finally:
        store.dispose()
    assert [(r.actor, r.action, r.target) for r in rows] == [
        ("cli", "key.create", key_id),
        ("cli", "key.topup", key_id),
        ("cli", "key.disable", key_id),
        ("cli", "key.enable", key_id),
        ("cli", "key.rotate_webhook_secret", key_id),
        ("cli", "model.disable", "flux-dev"),
        ("cli", "model.price_set", "flux-dev"),
        ("cli", "model.price_clear", "flux-dev"),
    ]


def test_admin_token_is_stored_hashed_and_shown_once(tmp_path: Path) -> None:
    none = cli(tmp_path, "admin", "token", check=False)
    assert none.returncode == 1 and "admin API is off" in none.stderr
    token = cli(tmp_path, "admin", "token", "--rotate").stdout.strip()
    assert token.startswith("iga_") and len(token) > 40
    again = cli(tmp_path, "admin", "token", check=False)
    assert again.returncode == 1 and token[:10] in again.stderr and token not in again.stderr + again.stdout
    assert token.encode() not in (tmp_path / "imagegate.db").read_bytes()
    configured = "a-configured-admin-token"
    env_token = subprocess.run(
        [sys.executable, "-m", "imagegate.cli", "admin", "token"],
        env=dict(os.environ, IMAGEGATE_DATA_DIR=str(tmp_path), IMAGEGATE_ADMIN_TOKEN=configured),
        capture_output=True, text=True, timeout=120,
    )
    assert env_token.returncode == 0 and env_token.stdout.strip() == configured


def test_weights_pull_without_network_says_which_weights(tmp_path: Path) -> None:
    result = cli(tmp_path, "weights", "pull", "flux-dev", "p-image-upscale", "nope", check=False)
    assert result.returncode != 0
    assert "flux-dev: could not download black-forest-labs/FLUX.1-dev" in result.stderr
    assert "p-image-upscale: builtin:realesrgan-x4plus needs no download" in result.stdout
    assert "unknown model id: nope" in result.stderr


def test_config_file_and_environment_precedence(tmp_path: Path) -> None:
    from imagegate.config import load_settings

    config = tmp_path / "imagegate.toml"
    config.write_text('port = 9001\nmax_attempts = 5\n[models.flux-dev]\nweights = "./weights/flux"\nprice_usd = "0.5"\n')
    os.environ["IMAGEGATE_PORT"] = "9002"
    try:
        settings = load_settings(config)
        flagged = load_settings(config, port=9003, host=None)
    finally:
        del os.environ["IMAGEGATE_PORT"]
    assert settings.port == 9002 and settings.max_attempts == 5
    # Flags win over the environment; a flag not given (None) leaves it alone.
    assert flagged.port == 9003 and flagged.host == "127.0.0.1" and flagged.base_url == "http://127.0.0.1:9003"
    assert settings.model("flux-dev").weights == str(tmp_path / "weights" / "flux")
    assert settings.base_url == "http://127.0.0.1:9002"


@pytest.mark.parametrize("argv", [["worker", "--models", "nope"]])
def test_worker_rejects_unknown_models(tmp_path: Path, argv: list[str]) -> None:
    result = cli(tmp_path, *argv, check=False)
    assert result.returncode == 2 and "unknown model id(s): nope" in result.stderr


FINITE_DECIMAL = "must be a finite amount of US dollars as a decimal string"
WALLET_AMOUNTS_REFUSED = [
    (["create", "--balance", "-5"], "--balance must not be negative"),
    (["create", "--balance", "nan"], f"--balance {FINITE_DECIMAL}"),
    (["create", "--balance", "Infinity"], f"--balance {FINITE_DECIMAL}"),
    (["create", "--balance", "1e999999999"], f"--balance {FINITE_DECIMAL}"),
    (["create", "--balance", "2000000000"], "--balance must be at most 1000000000 US dollars"),
    (["topup", "KEY", "-0.01"], "USD must not be negative"),
    (["topup", "KEY", "0"], "USD must be greater than 0"),
    (["topup", "KEY", "--", "-inf"], f"USD {FINITE_DECIMAL}"),
    (["topup", "KEY", "0.0000001"], "USD must have at most 6 decimal places"),
]


def test_wallet_amounts_must_be_finite_and_not_negative(tmp_path: Path) -> None:
    key = cli(tmp_path, "keys", "create", "--balance", "1").stdout.strip().splitlines()[-1]
    for argv, words in WALLET_AMOUNTS_REFUSED:
        refused = cli(tmp_path, "keys", *[key if a == "KEY" else a for a in argv], check=False)
        assert refused.returncode == 2, (argv, refused.stderr)
        assert refused.stderr.startswith("invalid amount: ") and words in refused.stderr, (argv, refused.stderr)
    # Nothing moved: the one wallet there is still holds its dollar.
    listed = cli(tmp_path, "keys", "list").stdout.strip().splitlines()
    assert len(listed) == 1 and "1.000000 USD" in listed[0], listed
