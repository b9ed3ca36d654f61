"""``ragserve validate [PATH | --overlay NAME]``: check manifests before a cluster sees them.

Renders overlays with ``kubectl kustomize``, validates every KServe object
against the full CRD schema (unknown fields rejected, as ``kubectl apply``
does), core objects against Kubernetes' schemas, then what the API server
validates beyond any schema (names, labels, selectors, ports, CIDRs, PDBs,
PriorityClasses, ConfigMap keys), the rules KServe's validating webhooks add
(canary, autoscaler, replicas, names) and the project's own (pod security, GPU
requests and quota). Exit status 1 on any error, 2 when the manifests cannot
be read (kustomize failed, no CRDs).
"""

from __future__ import annotations

import sys
from pathlib import Path

OVERLAYS_DIR = Path("inferenceservices") / "overlays"


def register(sub) -> None:
    from ragserve.manifests.crds import KSERVE_RELEASE
    from ragserve.manifests.schema import K8S_VERSION

    p = sub.add_parser(
        "validate",
        help="check manifests against the KServe CRDs, Kubernetes schemas and KServe's rules",
        description=(__doc__ or "").split("\n\n", 1)[1].strip(),
    )
    p.add_argument(
        "path",
        nargs="?",
        type=Path,
        help="a kustomization directory, a YAML file or a folder of YAML files (default: every overlay)",
    )
    p.add_argument(
        "--overlay", action="append", metavar="NAME", default=[], help=f"an overlay in {OVERLAYS_DIR}/ (repeatable)"
    )
    p.add_argument(
        "--crd-dir",
        type=Path,
        help=f"folder with the KServe CRDs (default: KServe {KSERVE_RELEASE}'s, downloaded once to ~/.cache/ragserve/crds)",
    )
    p.add_argument("--kserve-version", default=KSERVE_RELEASE, help="KServe release whose CRDs to download [%(default)s]")
    p.add_argument("--k8s-version", default=K8S_VERSION, help="Kubernetes version of the core schemas [%(default)s]")
    p.add_argument("--quiet", action="store_true", help="print problems only")
    p.set_defaults(func=run)


def overlays_dir() -> Path:
    """``inferenceservices/overlays`` of the working directory, else of this checkout."""
    if OVERLAYS_DIR.is_dir():
        return OVERLAYS_DIR
    import ragserve

    return Path(ragserve.__file__).resolve().parent.parent / OVERLAYS_DIR


def targets(args) -> list[Path]:
    from ragserve.manifests import ManifestError

    if args.path and args.overlay:
        raise ManifestError("give a PATH or --overlay, not both")
    if args.path:
        return [args.path]
    root = overlays_dir()
    if args.overlay:
        return [root / name for name in args.overlay]
    found = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not found:
        raise ManifestError(f"no overlays in {root}; give a PATH")
    return found


def run(args) -> int:
    from ragserve.manifests import ManifestError
    from ragserve.manifests.check import check_objects
    from ragserve.manifests.crds import crd_catalog
    from ragserve.manifests.render import render

    failed = False
    try:
        catalog = crd_catalog(args.crd_dir, args.kserve_version)
        for target in targets(args):
            objects = render(target)
            problems = check_objects(objects, catalog, args.k8s_version)
            errors = sum(p.severity == "error" for p in problems)
            for problem in problems:
                print(f"{target}: {problem}")
            if not args.quiet:
                print(f"{target}: {len(objects)} objects, {errors} errors, {len(problems) - errors} warnings")
            failed |= errors > 0
    except ManifestError as exc:
        print(f"ragserve validate: {exc}", file=sys.stderr)
        return 2
    return 1 if failed else 0
