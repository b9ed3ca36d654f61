"""``ragserve canary ACTION NAME``: inspect and drive the canary rollout of an InferenceService.

Actions: ``status``, ``start NAME --image/--runtime-version/--args/--env/--storage-uri``,
``set NAME PERCENT``, ``promote``, ``rollback`` and
``analyze --prometheus URL [--apply]``. Cluster flags (``--kubeconfig``,
``--context``, ``--namespace``) and analysis flags are generated from
:class:`~ragserve.canary.kube.ClusterSettings` and
:class:`~ragserve.canary.analyze.AnalysisSettings`, so each is also an env var
(``RAGSERVE_CANARY_*``). Changes are JSON merge patches
(``application/merge-patch+json``); ``--dry-run`` prints the patch instead
of sending it. Patches are recorded under the field manager ``ragserve``; when
the object is managed by ``kubectl apply`` and the next apply would set a
changed field back, the command says so (keep such changes in the kustomization).
Errors end the command with status 1 and one line on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

ANALYZE_EXIT = {"promote": 0, "rollback": 3, "inconclusive": 4}

_EPILOG = "analyze exits 0 for a promote verdict, 3 for rollback, 4 for inconclusive; any error exits 1."


def register(sub) -> None:
    from ragserve.canary.analyze import AnalysisSettings
    from ragserve.canary.kube import ClusterSettings
    from ragserve.settings import add_settings_arguments

    p = sub.add_parser(
        "canary",
        help="inspect, shift, promote, roll back or analyze a canary rollout",
        description="Canary rollouts of a KServe InferenceService (Knative and Standard deployment modes).",
        epilog=_EPILOG,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, help_text: str, *, dry_run: bool = True, output: bool = False):
        a = actions.add_parser(name, help=help_text, description=help_text)
        a.add_argument("name", metavar="NAME", help="InferenceService name")
        add_settings_arguments(a, ClusterSettings)
        if dry_run:
            a.add_argument("--dry-run", action="store_true", help="print the JSON merge patch instead of sending it")
        if output:
            a.add_argument("--output", choices=["text", "json"], default="text", help="output format")
        return a

    action("status", "traffic per revision, rolled-out revisions and readiness", dry_run=False, output=True)
    start = action("start", "start a canary: a new revision (Knative) or a spec.canary[] entry derived from the "
                            "stable predictor (Standard)")
    start.add_argument("--image", default="", help="the canary's container image")
    start.add_argument("--runtime-version", default="", help="model.runtimeVersion: the runtime image's tag")
    start.add_argument("--args", nargs="*", default=None, metavar="ARG",
                       help="replace the model block's (or first container's) own args")
    start.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="set an env var (repeatable)")
    start.add_argument("--storage-uri", default="", help="model.storageUri: other model files")
    start.add_argument("--percent", type=int, default=10, help="share of traffic for the canary [%(default)s]")
    start.add_argument("--variant", default="candidate",
                       help="Standard mode: spec.canary[].predictor.name; its Deployment is NAME-VARIANT-predictor "
                            "[%(default)s]")
    action("set", "set the share of traffic the canary gets").add_argument("percent", type=int, metavar="PERCENT")
    action("promote", "send all traffic to the canary and make it the stable predictor")
    action("rollback", "send all traffic back to the stable predictor")
    analyze = action("analyze", "compare canary and stable on Prometheus metrics", output=True)
    analyze.epilog = _EPILOG
    add_settings_arguments(analyze, AnalysisSettings)
    analyze.add_argument("--apply", action="store_true", help="promote or roll back according to the verdict")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, *, target=None, http_client=None) -> int:
    """Run one action; ``target`` (a CanaryTarget) and ``http_client`` (for Prometheus) are injectable."""
    from pydantic import ValidationError

    from ragserve.errors import BadRequest, RagserveError, describe_validation_errors
    from ragserve.settings import settings_from_args

    try:
        if args.action == "analyze":
            from ragserve.canary.analyze import AnalysisSettings

            # check the analysis flags before touching the cluster
            args.analysis = settings_from_args(AnalysisSettings, args)
            if not args.analysis.prometheus and not args.analysis.local:
                raise BadRequest(
                    "analyze needs --prometheus URL (or RAGSERVE_CANARY_PROMETHEUS), or --local for `ragserve up`",
                    param="prometheus",
                )
            a = args.analysis
            if a.eval_dataset and not (a.eval_url or (a.eval_stable_url and a.eval_canary_url)):
                raise BadRequest(
                    "--eval-dataset needs --eval-url (one address, answers told apart by revision header) "
                    "or both --eval-stable-url and --eval-canary-url",
                    param="eval_url",
                )
        if target is None:
            from ragserve.canary.kube import ClusterSettings, connect

            target = connect(settings_from_args(ClusterSettings, args))
        return _ACTIONS[args.action](args, target, http_client)
    except ValidationError as exc:
        return _fail(describe_validation_errors(exc.errors()))
    except RagserveError as exc:
        return _fail(exc.message)


def _fail(message: str) -> int:
    print(f"ragserve canary: error: {message}", file=sys.stderr)
    return 1


def _status(args, target, _http) -> int:
    from ragserve.canary.ops import canary_state, render_state

    state = canary_state(target.get(args.name))
    print(json.dumps(dataclasses.asdict(state), indent=2) if args.output == "json" else render_state(state))
    return 0


def _set(args, target, _http) -> int:
    from ragserve.canary.ops import canary_state, set_traffic_patch

    isvc = target.get(args.name)
    before = canary_state(isvc).canary_percent
    patch = set_traffic_patch(isvc, args.percent)
    _send(target, args, patch, f"canary traffic {'unset' if before is None else f'{before}%'} -> {args.percent}%", isvc)
    return 0


def _start(args, target, _http) -> int:
    from ragserve.canary.derive import CanaryChange
    from ragserve.canary.ops import deployment_mode, start_patch
    from ragserve.errors import BadRequest

    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadRequest(f"--env takes KEY=VALUE, got {item!r}", param="env")
        env[key] = value
    change = CanaryChange(image=args.image, runtime_version=args.runtime_version,
                          args=tuple(args.args) if args.args is not None else None, env=env,
                          storage_uri=args.storage_uri)
    isvc = target.get(args.name)
    patch = start_patch(isvc, change, args.percent, args.variant)
    where = ("a new revision takes" if deployment_mode(isvc) == "Knative"
             else f"spec.canary[] {args.variant!r} (Deployment {args.name}-{args.variant}-predictor) takes")
    _send(target, args, patch, f"canary started: {where} {args.percent}% of traffic", isvc)
    return 0


def _promote(args, target, _http) -> int:
    _decide(args, target, target.get(args.name), "promote")
    return 0


def _rollback(args, target, _http) -> int:
    _decide(args, target, target.get(args.name), "rollback")
    return 0


def _decide(args, target, isvc, decision: str) -> None:
    from ragserve.canary.ops import deployment_mode, promote_patch, rollback_patch

    mode = deployment_mode(isvc)
    if decision == "promote":
        patch = promote_patch(isvc)
        summary = (
            "promoted: canaryTrafficPercent removed, the latest revision takes 100% of traffic"
            if mode == "Knative"
            else "promoted: spec.predictor runs what the canary ran (its scheduling, autoscaling and storage kept), "
            "spec.canary removed"
        )
    else:
        patch = rollback_patch(isvc)
        summary = (
            "rolled back: canaryTrafficPercent 0, 100% of traffic to the previous revision"
            if mode == "Knative"
            else "rolled back: spec.canary removed, 100% of traffic to spec.predictor"
        )
    _send(target, args, patch, summary, isvc)


def _analyze(args, target, http_client) -> int:
    import httpx

    from ragserve.canary.analyze import LocalRevisions, analyze, render
    from ragserve.canary.ops import canary_state
    from ragserve.canary.prometheus import Prometheus

    settings = args.analysis
    isvc = target.get(args.name)
    state = canary_state(isvc)
    base_url = getattr(target, "server", "") if settings.local else settings.prometheus
    client = http_client or httpx.Client(base_url=base_url, timeout=settings.prometheus_timeout)
    try:
        source = LocalRevisions(client) if settings.local else Prometheus(client)
        result = analyze(state, source, settings)
    finally:
        if http_client is None:
            client.close()
    if args.output == "json":
        print(json.dumps(dataclasses.asdict(result), indent=2))
    else:
        print(render(result))
    if args.apply and result.verdict != "inconclusive":
        _decide(args, target, isvc, result.verdict)
    return ANALYZE_EXIT[result.verdict]


def _send(target, args, patch: dict, summary: str, isvc: dict) -> None:
    from ragserve.canary.ops import reverted_by_apply
    from ragserve.canary.target import MERGE_PATCH

    if args.dry_run:
        print(f"# dry run, not sent: JSON merge patch for inferenceservice/{args.name} (Content-Type: {MERGE_PATCH})")
        print(json.dumps(patch, indent=2))
        return
    target.patch(args.name, patch)
    print(f"inferenceservice/{args.name} {summary}")
    reverted = reverted_by_apply(isvc, patch)
    if reverted:
        print(f"note: the next `kubectl apply` of this object's manifests sets {', '.join(reverted)} back; "
              "to keep the change, make it in the kustomization (see ragserve/canary/README.md)")


_ACTIONS = {"status": _status, "start": _start, "set": _set, "promote": _promote, "rollback": _rollback, "analyze": _analyze}
