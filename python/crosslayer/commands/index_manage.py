"""`crosslayer index ls|rm|compact|verify|export|rebase`: looking after an image index once it is built."""

from __future__ import annotations

import json
import os
import sys

from crosslayer.commands.options import add_command, bounded_int, positive_int

DB_HELP = "an image index directory"


def _open(directory, mode: str = "r", verify: str = "lazy"):
    from crosslayer.retrieval.image_index import ImageIndex

    return ImageIndex.open(directory, mode, verify=verify)


def run_ls(args) -> int:
    with _open(args.db_dir) as index:
        live = index.codes.live_ids()
        end = None if args.limit is None else args.offset + args.limit
        page = live[args.offset:end]
        keys = index.codes.keys(page) if len(page) else []
        root = index.root
    items = [{"id": int(i), "key": key} for i, key in zip(page, keys)]
    if args.json:
        print(json.dumps({"index": str(args.db_dir), "root": root, "total": len(live), "offset": args.offset,
                          "items": items}, indent=1))
    else:
        for item in items:
            print(f"{item['id']}\t{item['key']}")
        print(f"{len(items)} of {len(live)} images (from #{args.offset}); keys relative to {root}", file=sys.stderr)
    return 0


def run_rm(args) -> int:
    with _open(args.db_dir, "a") as index:
        removed = index.remove(args.keys)
        left, deleted = len(index), index.codes.deleted
    print(f"deleted {removed} images; {left} left in {args.db_dir} ({deleted} deleted in all: "
          f"'crosslayer index compact {args.db_dir}' reclaims their space)")
    return 0


def run_compact(args) -> int:
    with _open(args.db_dir, "a") as index:
        done = index.codes.compact()
    print(f"compacted {args.db_dir}: removed {done['removed']} deleted images; "
          f"{done['bytes_before']} bytes before, {done['bytes_after']} bytes after")
    return 0


def run_verify(args) -> int:
    # sizes and headers are checked on opening; verify() reads every byte against its checksum
    with _open(args.db_dir, verify="none") as index:
        problems = index.verify()
        summary = index.codes.summary()
    if problems:
        for problem in problems:
            print(f"problem: {problem}")
        print(f"crosslayer index verify: {len(problems)} problem(s) in {args.db_dir}", file=sys.stderr)
        return 1
    print(f"ok: {args.db_dir}: {summary['count']} images ({summary['deleted']} deleted) in {summary['segments']} "
          f"segments, {summary['bytes']} bytes checked")
    return 0


def run_export(args) -> int:
    with _open(args.db_dir) as index:
        written = index.export(args.out, args.keys)
    print(f"exported {written} images' codes and keys to {args.out}")
    return 0


def run_rebase(args) -> int:
    with _open(args.db_dir, "a") as index:
        before = index.root
        index.rebase(args.new_root)
        after = index.root
        keys = index.keys()
        missing = [key for key in keys if not os.path.exists(index.path_of(key))]
    print(f"root of {args.db_dir}: {before} -> {after}")
    if missing:
        print(f"warning: {len(missing)} of {len(keys)} indexed images are not under {after} (e.g. {missing[0]})",
              file=sys.stderr)
    return 0


def register(actions) -> None:
    ls = add_command(actions, "ls", run_ls, "list the indexed images (id and key; deleted ones are not listed)",
                     "  crosslayer index ls db\n  crosslayer index ls db --offset 100 --limit 50 --json\n")
    ls.add_argument("db_dir", metavar="DB_DIR", help=DB_HELP)
    ls.add_argument("--offset", type=bounded_int(0), default=0, help="skip this many images first")
    ls.add_argument("--limit", type=positive_int, default=None, help="list at most this many (default: all)")
    ls.add_argument("--json", action="store_true", help="one JSON document (index, root, total, offset, items)")

    rm = add_command(actions, "rm", run_rm, "delete images from the index (tombstones: searches skip them at once; "
                     "'index compact' reclaims the space)",
                     "  crosslayer index rm db holiday/img_001.jpg          # a key, as 'index ls' shows it\n"
                     "  crosslayer index rm db /photos/holiday/img_002.jpg  # or the image's path\n")
    rm.add_argument("db_dir", metavar="DB_DIR", help=DB_HELP)
    rm.add_argument("keys", nargs="+", metavar="KEY", help="keys (relative to the index's root) or image paths")

    compact = add_command(actions, "compact", run_compact, "rewrite the index without its deleted images (ids of "
                          "later images change)", "  crosslayer index compact db\n")
    compact.add_argument("db_dir", metavar="DB_DIR", help=DB_HELP)

    verify = add_command(actions, "verify", run_verify, "check every file of the index against its checksum "
                         "(exit 0 and 'ok', or 1 and one line per problem)", "  crosslayer index verify db\n")
    verify.add_argument("db_dir", metavar="DB_DIR", help=DB_HELP)

    export = add_command(actions, "export", run_export, "write the codes and keys of an index to one code file "
                         "(.xlc; searchable with 'crosslayer search DB OUT.xlc')",
                         "  crosslayer index export db all.xlc\n"
                         "  crosslayer index export db two.xlc --keys a.jpg b.jpg\n")
    export.add_argument("db_dir", metavar="DB_DIR", help=DB_HELP)
    export.add_argument("out", metavar="OUT", help="the code file to write (.xlc)")
    export.add_argument("--keys", nargs="+", default=None, metavar="KEY",
                        help="only these images (keys or paths) (default: every image)")

    rebase = add_command(actions, "rebase", run_rebase, "record the folder the images were moved to (keys are "
                         "paths relative to it)", "  crosslayer index rebase db /mnt/new-place/photos\n")
    rebase.add_argument("db_dir", metavar="DB_DIR", help=DB_HELP)
    rebase.add_argument("new_root", metavar="NEW_ROOT", help="the folder now holding the indexed images")
