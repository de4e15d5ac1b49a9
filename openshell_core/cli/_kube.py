"""``kube`` commands: the manifests of a gateway on a Kubernetes cluster."""

from __future__ import annotations

import argparse
from typing import Any

from openshell_core.gateway.names import DEFAULT_GATEWAY_NAME
from openshell_core.images import ImageSet


def register(commands: Any) -> None:
    kube = commands.add_parser(
        "kube",
        help="render the Kubernetes manifests of a gateway on a cluster",
        description="A gateway on a cluster is a namespace, a service account with a Role in "
        "that namespace, a StatefulSet of one replica whose claim openshell-data holds "
        "the gateway's state, and a Service (docs: README, 'Kubernetes').",
    )
    actions = kube.add_subparsers(dest="action", metavar="ACTION", required=True)
    render = actions.add_parser("manifests", help="print them as YAML (for kubectl apply -f -)")
    render.add_argument("--name", default=DEFAULT_GATEWAY_NAME, help="gateway name")
    render.add_argument("--namespace", default="openshell", help="namespace (default: openshell)")
    render.add_argument("--image", default=ImageSet().gateway, help="gateway image")
    render.add_argument("--sandbox-image", default=ImageSet().sandbox, help="sandbox image")
    render.add_argument("--storage", default="1Gi", help="size of the gateway's claim")
    render.add_argument("--storage-class", default=None, help="storage class of the claim")
    render.add_argument(
        "--node-port", type=int, default=None, help="expose the Service on this node port"
    )
    render.add_argument(
        "--no-namespace", action="store_true", help="leave out the Namespace object"
    )
    render.set_defaults(run=_manifests)


def _manifests(args: argparse.Namespace) -> int:
    from openshell_core.kube.manifests import KubeGatewaySpec, render, to_yaml  # noqa: PLC0415

    spec = KubeGatewaySpec(
        name=args.name,
        namespace=args.namespace,
        image=args.image,
        sandbox_image=args.sandbox_image,
        storage=args.storage,
        storage_class=args.storage_class,
        service_port=args.node_port,
    )
    print(to_yaml(render(spec, with_namespace=not args.no_namespace)), end="")
    return 0
