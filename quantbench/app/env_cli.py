"""`quantbench env`: the method environments (runner/envs.py) that methods whose library cannot
share the main environment run in.

quantbench env list             each environment, where it lives, whether it works, which methods need it
quantbench env create NAME      build it from the project's pyproject extra NAME
"""

from __future__ import annotations

import argparse
import sys

from quantbench.runner import envs


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("env", help="list or create the environments some methods run in")
    actions = parser.add_subparsers(dest="env_command", required=True)
    actions.add_parser("list", help="each method environment: path, whether it works, the methods that need it")
    create = actions.add_parser("create", help="build a method environment from the project's pyproject extra")
    create.add_argument("name", help="the environment (the extra it is built from), e.g. llmcompressor")
    create.add_argument(
        "--torch",
        metavar="REQUIREMENT",
        help="the torch to install first (default: the release this interpreter runs, e.g. torch==2.13.0)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    if args.env_command == "create":
        print(f"building {envs.MethodEnv(args.name).path} (pip's output follows)", file=sys.stderr, flush=True)
        env = envs.create(args.name, args.torch)
        print(f"{env.name}: ready at {env.path}")
        return 0
    from quantbench.backends.registry import get_backend

    print(f"method environments in {envs.envs_root()} (QUANTBENCH_ENVS overrides)")
    for name, methods in sorted(envs.declared_environments().items()):
        env = envs.MethodEnv(name)
        health = envs.probe(env, get_backend(methods[0]).library)
        state = f"works ({health.detail})" if health.ok else health.detail
        print(f"{name:14s} {env.path}\n               {state}\n               methods: {', '.join(methods)}")
    return 0
