"""Summarise a py-spy ``--format raw`` profile: ``python -m bench.profile_summary FILE [N]``.

Prints the share of samples per thread, then the top N functions by
inclusive and by self samples (idle samples, in epoll/select waits, are
counted apart so that shares are of busy time).
"""

from __future__ import annotations

import collections
import sys

IDLE = ("select (selectors.py", "poll (selectors.py", "_worker (concurrent/futures/thread.py", "wait (threading.py",
        "select ", "epoll")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    path, top = argv[0], int(argv[1]) if len(argv) > 1 else 25
    inclusive: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    per_file: collections.Counter = collections.Counter()
    threads: collections.Counter = collections.Counter()
    busy = idle = 0
    for line in open(path):
        stack, _, count = line.rstrip().rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        leaf = frames[-1]
        if any(mark in leaf for mark in IDLE) or "idle" in leaf:
            idle += n
            continue
        busy += n
        thread = next((f for f in frames if f.startswith("thread ")), frames[0])
        threads[thread.split(" (")[0] + (" worker" if "ThreadPoolExecutor" in stack or "tornado-signin" in thread
                                           else "")] += n
        for frame in set(frames):
            inclusive[frame] += n
        own[leaf] += n
        per_file[leaf.rpartition("(")[2].split(":")[0]] += n
    print(f"busy samples {busy}, idle {idle}")
    for name, n in threads.most_common(6):
        print(f"  {100 * n / busy:5.1f}%  {name}")
    print("inclusive:")
    for name, n in inclusive.most_common(top):
        print(f"  {100 * n / busy:5.1f}%  {name}")
    print("self, by file:")
    for name, n in per_file.most_common(top):
        print(f"  {100 * n / busy:5.1f}%  {name}")
    print("self:")
    for name, n in own.most_common(top):
        print(f"  {100 * n / busy:5.1f}%  {name}")


if __name__ == "__main__":
    main()
