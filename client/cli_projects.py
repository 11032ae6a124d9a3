"""`skillserve project ...` and `skillserve key ...`: projects and their API keys, for an operator key
(/v1/organization). A key's value is printed once, when it is made; nothing can show it again."""

from __future__ import annotations

import argparse
from typing import Any

from client import cli
from client.cli import checked


def connect(args: argparse.Namespace) -> Any:
    """client.cli's `connect`, looked up at each call: these commands are imported while the parser is built, and a
    binding made then would keep whatever `connect` was at that moment."""
    return cli.connect(args)

PROJECTS = "/v1/organization/projects"


def _keys(project: str) -> str:
    return f"{PROJECTS}/{project}/api_keys"


def _key_line(key: dict[str, Any]) -> str:
    state = "revoked" if key.get("revoked_at") else "active"
    return f"{key['id']}  {key['owner']['role']:<9}  {state:<7}  {key['redacted_value']}  {key['name']}"


def _made(key: dict[str, Any]) -> None:
    print(f"{key['id']}  {key['owner']['role']}  project {key['project_id']}")
    print(f"key: {key['value']}")
    print("(shown once: store it now; the gateway keeps only its hash)")


def cmd_project_create(args: argparse.Namespace) -> int:
    with connect(args) as client:
        project = checked(client.post(PROJECTS, json={"name": args.name}))
    print(f"{project['id']}  {project['name']}")
    return 0


def cmd_project_list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        listed = checked(client.get(PROJECTS, params={"include_archived": args.all}))
    for project in listed["data"]:
        print(f"{project['id']:<22}  {project['status']:<8}  {project['name']}")
    return 0


def cmd_project_archive(args: argparse.Namespace) -> int:
    with connect(args) as client:
        project = checked(client.post(f"{PROJECTS}/{args.project}/archive"))
    print(f"{project['id']}: {project['status']} (its keys revoked)")
    return 0


def cmd_key_create(args: argparse.Namespace) -> int:
    with connect(args) as client:
        _made(checked(client.post(_keys(args.project), json={"name": args.name, "role": args.role})))
    return 0


def cmd_key_list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        listed = checked(client.get(_keys(args.project)))
    for key in listed["data"]:
        print(_key_line(key))
    return 0


def cmd_key_revoke(args: argparse.Namespace) -> int:
    with connect(args) as client:
        checked(client.delete(f"{_keys(args.project)}/{args.key_id}"))
    print(f"revoked {args.key_id} (every replica refuses it within the gateway's key_cache_ttl_s)")
    return 0


def cmd_key_rotate(args: argparse.Namespace) -> int:
    with connect(args) as client:
        _made(checked(client.post(f"{_keys(args.project)}/{args.key_id}/rotate")))
    print(f"revoked {args.key_id}")
    return 0


def add_project_commands(sub: Any) -> None:
    """The `project` and `key` commands (operator key)."""
    project = sub.add_parser("project", help="projects: each team's skills, files and jobs, apart (operator key)")
    commands = project.add_subparsers(dest="project_command", required=True)
    create = commands.add_parser("create", help="create a project")
    create.add_argument("name")
    create.set_defaults(func=cmd_project_create)
    listing = commands.add_parser("list", help="list projects, the default one first")
    listing.add_argument("--all", action="store_true", help="archived ones too")
    listing.set_defaults(func=cmd_project_list)
    archive = commands.add_parser("archive", help="archive a project: its keys revoked, its objects kept")
    archive.add_argument("project")
    archive.set_defaults(func=cmd_project_archive)

    key = sub.add_parser("key", help="a project's API keys: create, list, revoke, rotate (operator key)")
    commands = key.add_subparsers(dest="key_command", required=True)
    create = commands.add_parser("create", help="make a key; its value is printed once")
    create.add_argument("project", help="project id (default, or proj_...)")
    create.add_argument("--name", default="", help="who holds it, what for")
    create.add_argument("--role", default="inference", choices=("inference", "admin"))
    create.set_defaults(func=cmd_key_create)
    listing = commands.add_parser("list", help="list a project's keys (never their values)")
    listing.add_argument("project")
    listing.set_defaults(func=cmd_key_list)
    for name, func, text in (("revoke", cmd_key_revoke, "revoke a key"),
                             ("rotate", cmd_key_rotate, "a new key for an old one, the old one revoked")):
        command = commands.add_parser(name, help=text)
        command.add_argument("project")
        command.add_argument("key_id")
        command.set_defaults(func=func)
