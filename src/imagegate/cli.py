"""The operator's command line: ``imagegate serve | worker | migrate | keys | models | admin | fixtures | weights``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Sequence

from imagegate.config import Settings, load_settings


def _settings(args: argparse.Namespace, **overrides: object) -> Settings:
    return load_settings(getattr(args, "config", None), **overrides)


def _store(settings: Settings):  # type: ignore[no-untyped-def]
    from imagegate.jobs.store import JobStore

    store = JobStore.from_settings(settings)
    store.migrate()
    return store


class _Terminated(Exception):
    """SIGTERM reached the server: leave the HTTP loop and run the shutdown steps."""


def _on_sigterm(_signum: int, _frame: object) -> None:
    # Once: a second SIGTERM must not cut the workers' grace period short (SIGKILL does).
    signal.signal(signal.SIGTERM, lambda *_: logging.getLogger("imagegate").info("already stopping"))
    raise _Terminated()


def cmd_serve(args: argparse.Namespace) -> int:
    from imagegate.telemetry import multiprocess

    settings = _settings(args, host=args.host, port=args.port)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.metrics_enabled:
        # Before anything below imports prometheus_client, in this process and the ones it starts.
        multiprocess.share_between_processes(settings.metrics_dir)

    import uvicorn

    from imagegate.api.app import create_app
    from imagegate.runtime.supervisor import WorkerSupervisor, worker_slots
    from imagegate.runtime.housekeeping import start_housekeeping_thread
    from imagegate.telemetry.logs import configure_logging
    from imagegate.webhooks.deliverer import start_deliverer_thread

    configure_logging(settings.log_format)
    store = _store(settings)
    if settings.metrics_enabled:
        from imagegate.telemetry.metrics import count_statements

        count_statements(store, "api")
    slots = worker_slots(settings)
    supervisor = WorkerSupervisor(settings, slots, store=store) if slots else None
    if supervisor:
        supervisor.start()
    thread, stop_deliverer = start_deliverer_thread(store, settings)
    housekeeping, stop_housekeeping = start_housekeeping_thread(store, settings)
    # uvicorn handles SIGTERM itself (it drains HTTP), then raises the signal again against the
    # handler that was installed before it. With the default handler that kills the process on
    # the spot and the steps below never run: the workers were orphaned instead of being given
    # their grace period. This handler turns that second delivery into an exception instead.
    signal.signal(signal.SIGTERM, _on_sigterm)
    common = dict(
        host=settings.host,
        port=settings.port,
        log_level="warning",
        # uvicorn's own lines go through the handler configure_logging() installed (JSON or text).
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
    )
    try:
        if settings.api_processes > 1:
            # uvicorn binds once and runs the app factory in each process.
            from imagegate.api.app import SETTINGS_ENV

            os.environ[SETTINGS_ENV] = settings.model_dump_json()
            uvicorn.run(
                "imagegate.api.app:create_app_from_environment", factory=True, workers=settings.api_processes, **common
            )
        else:
            uvicorn.run(create_app(settings, store=store), **common)
    except _Terminated:
        logging.getLogger("imagegate").info("SIGTERM: stopping the workers (grace %gs)", settings.shutdown_grace_seconds)
    finally:
        stop_deliverer.set()
        stop_housekeeping.set()
        if supervisor:
            supervisor.stop()
        thread.join(5)
        housekeeping.join(5)
        store.dispose()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    # Pinned before anything below imports torch.
    from imagegate.runtime.devices import pin_to_gpu

    pin_to_gpu(args.gpu)
    from imagegate.runtime.worker import run_worker

    settings = _settings(args)
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    if models:
        from imagegate.catalog import MODELS

        unknown = [m for m in models if m not in MODELS]
        if unknown:
            print(f"unknown model id(s): {', '.join(unknown)}", file=sys.stderr)
            return 2
    run_worker(settings, models, gpu=args.gpu, health_port=args.health_port)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from imagegate.billing.money import format_usd, parse_amount
    from imagegate.exceptions import RequestNotFoundError
    from imagegate.jobs.audit import Actor

    store = _store(_settings(args))
    # Changes go through the same audited actions as the admin API's.
    admin = store.admin
    try:
        if args.keys_cmd == "create":
            plaintext, key = admin.create_key(Actor.CLI, name=args.name or "", balance_micros=parse_amount(args.balance))
            print(f"id: {key.id}")
            print(f"name: {key.name}")
            print(f"balance: {format_usd(key.balance_micros)} USD")
            print(f"webhook secret: {key.webhook_secret}")
            print(plaintext)
        elif args.keys_cmd == "list":
            for key in store.keys.list():
                state = "disabled" if key.disabled else "active"
                print(f"{key.id}\t{key.key_prefix}…\t{key.name}\t{format_usd(key.balance_micros)} USD\t{state}")
        else:
            key_id = store.keys.find(args.key).id
            if args.keys_cmd == "topup":
                key = admin.topup(Actor.CLI, key_id, parse_amount(args.usd, positive=True))
                print(f"{key.id} balance: {format_usd(key.balance_micros)} USD")
            elif args.keys_cmd in ("disable", "enable"):
                key = admin.set_key_disabled(Actor.CLI, key_id, args.keys_cmd == "disable")
                print(f"{key.id} {args.keys_cmd}d")
            elif args.keys_cmd == "rotate-webhook-secret":
                key = admin.rotate_webhook_secret(Actor.CLI, key_id)
                print(key.webhook_secret)
    except RequestNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 1
    except ValueError as exc:
        field = "--balance" if args.keys_cmd == "create" else "USD"
        print(f"invalid amount: {field} {exc}", file=sys.stderr)
        return 2
    finally:
        store.dispose()
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from imagegate.billing.money import format_usd, parse_amount
    from imagegate.billing.pricing import price_of_defaults
    from imagegate.catalog import MODELS
    from imagegate.jobs.audit import Actor

    settings = _settings(args)
    store = _store(settings)
    try:
        if args.models_cmd == "list":
            switches = store.models.states()
            for spec in MODELS.values():
                switch = switches.get(spec.id)
                enabled = settings.model(spec.id).enabled and (switch is None or switch.enabled)
                weights = settings.model(spec.id).weights or spec.default_weights
                routes = ", ".join(r.path for r in spec.routes)
                price = price_of_defaults(spec, settings, runtime_micros=switch.price_micros if switch else None)
                shown = "?" if price is None else format_usd(price, trim=True)
                print(f"{spec.id}\t{'enabled' if enabled else 'disabled'}\t${shown}\t{spec.engine_key}\t{weights}\t{routes}")
            return 0
        if args.id not in MODELS:
            print(f"unknown model id: {args.id}", file=sys.stderr)
            return 2
        if args.models_cmd == "price":
            if (args.usd is None) == (not args.clear):
                print("give a price in USD per image, or --clear", file=sys.stderr)
                return 2
            micros = None if args.clear else parse_amount(args.usd)
            store.admin.set_model_price(Actor.CLI, args.id, micros)
            print(f"{args.id} price: {'cleared' if micros is None else '$' + format_usd(micros, trim=True) + ' per image'}")
            return 0
        store.admin.set_model_enabled(Actor.CLI, args.id, args.models_cmd == "enable")
        print(f"{args.id} {args.models_cmd}d")
    except ValueError as exc:
        print(f"invalid amount: {exc}", file=sys.stderr)
        return 2
    finally:
        store.dispose()
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """Bring the database to this release's schema and exit (a deploy's first step)."""
    store = _store(_settings(args))
    try:
        print(f"database schema at revision {store.db.schema_revision()}")
    finally:
        store.dispose()
    return 0


def cmd_admin(args: argparse.Namespace) -> int:
    from imagegate.jobs.audit import Actor

    settings = _settings(args)
    if settings.admin_token is not None:
        if args.rotate:
            print(
                "admin_token is set in the configuration (or IMAGEGATE_ADMIN_TOKEN), and it wins over a stored "
                "token: change it there",
                file=sys.stderr,
            )
            return 2
        print(settings.admin_token)
        return 0
    store = _store(settings)
    try:
        if args.rotate:
            plaintext, _stored = store.admin.rotate_admin_token(Actor.CLI)
            print(plaintext)
            return 0
        stored = store.admin_tokens.current()
    finally:
        store.dispose()
    if stored is None:
        print("no admin token: the admin API is off (`imagegate admin token --rotate` creates one)", file=sys.stderr)
    else:
        print(
            f"an admin token ({stored.token_prefix}…) is stored as a hash and cannot be shown again; "
            "`imagegate admin token --rotate` replaces it",
            file=sys.stderr,
        )
    return 1


def cmd_fixtures(args: argparse.Namespace) -> int:
    from imagegate.fixtures import build_all

    config = build_all(Path(args.dir))
    print(config)
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from imagegate.engines.weights import pull

    settings = _settings(args)
    return pull(settings, args.ids)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagegate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        # Accepted before or after a sub-command: `keys --config F create` and `keys create --config F`.
        p.add_argument("--config", default=argparse.SUPPRESS, help="TOML settings file (IMAGEGATE_* variables override it)")
        return p

    p = with_config(sub.add_parser("serve", help="run the API server with its embedded workers"))
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(func=cmd_serve)

    p = with_config(sub.add_parser("migrate", help="migrate the database to this release's schema, then exit"))
    p.set_defaults(func=cmd_migrate)

    p = with_config(sub.add_parser("worker", help="run a worker process"))
    p.add_argument("--models", help="comma-separated model ids this worker serves (default: all)")
    p.add_argument("--gpu", type=int, help="the GPU this worker runs on (sets CUDA_VISIBLE_DEVICES; default: as the environment says)")
    p.add_argument("--health-port", type=int, help="serve /healthz, /readyz and /metrics on this port (on `host`)")
    p.set_defaults(func=cmd_worker)

    keys = with_config(sub.add_parser("keys", help="manage API keys and wallets"))
    ks = keys.add_subparsers(dest="keys_cmd", required=True)
    p = with_config(ks.add_parser("create", help="create a key; prints the key alone on the last line"))
    p.add_argument("--balance", required=True, help="starting balance in USD, e.g. 10 or 0.25")
    p.add_argument("--name")
    p = with_config(ks.add_parser("topup", help="add USD to a key's wallet"))
    p.add_argument("key")
    p.add_argument("usd")
    with_config(ks.add_parser("list", help="list keys"))
    for name in ("disable", "enable", "rotate-webhook-secret"):
        with_config(ks.add_parser(name)).add_argument("key")
    keys.set_defaults(func=cmd_keys)

    models = with_config(sub.add_parser("models", help="list, enable and disable models"))
    ms = models.add_subparsers(dest="models_cmd", required=True)
    with_config(ms.add_parser("list"))
    with_config(ms.add_parser("disable")).add_argument("id")
    with_config(ms.add_parser("enable")).add_argument("id")
    p = with_config(ms.add_parser("price", help="set a runtime price per image (over the catalog's and the config's)"))
    p.add_argument("id")
    p.add_argument("usd", nargs="?", help="USD per image, e.g. 0.02")
    p.add_argument("--clear", action="store_true", help="remove the runtime price")
    models.set_defaults(func=cmd_models)

    admin = with_config(sub.add_parser("admin", help="the admin API's token"))
    ads = admin.add_subparsers(dest="admin_cmd", required=True)
    p = with_config(ads.add_parser("token", help="print the configured admin token, or --rotate to store a new one"))
    p.add_argument("--rotate", action="store_true", help="generate a new token, store its hash, print it once")
    admin.set_defaults(func=cmd_admin)

    fixtures = sub.add_parser("fixtures", help="tiny random-weight checkpoints for offline runs")
    fs = fixtures.add_subparsers(dest="fixtures_cmd", required=True)
    fs.add_parser("build").add_argument("dir")
    fixtures.set_defaults(func=cmd_fixtures)

    weights = with_config(sub.add_parser("weights", help="download production weights"))
    ws = weights.add_subparsers(dest="weights_cmd", required=True)
    with_config(ws.add_parser("pull")).add_argument("ids", nargs="+")
    weights.set_defaults(func=cmd_weights)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from imagegate.exceptions import SchemaAheadError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SchemaAheadError as exc:
        print(f"imagegate: refusing to start: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
