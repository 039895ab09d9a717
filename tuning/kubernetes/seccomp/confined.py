#!/usr/bin/python3
"""Runs a command under a seccomp profile in the OCI JSON form (the form Kubernetes, Docker
and Podman load), as a container runtime would: the filter is loaded, then the command is
executed. For checking a profile without a container runtime.

    confined.py PROFILE [--without NAME,...] -- COMMAND [ARG...]

--without takes calls out of the profile's allow lists (to see how a program fails without
them). Needs libseccomp's Python binding (Debian: python3-seccomp).
"""
import json
import os
import sys

import seccomp

# The comparisons of the OCI form's argument conditions, as libseccomp names them.
OPS = {
    "SCMP_CMP_NE": seccomp.NE,
    "SCMP_CMP_LT": seccomp.LT,
    "SCMP_CMP_LE": seccomp.LE,
    "SCMP_CMP_EQ": seccomp.EQ,
    "SCMP_CMP_GE": seccomp.GE,
    "SCMP_CMP_GT": seccomp.GT,
    "SCMP_CMP_MASKED_EQ": seccomp.MASKED_EQ,
}


def main():
    args = sys.argv[1:]
    if "--" not in args or not args[0] or args[0] == "--":
        sys.exit(__doc__)
    split = args.index("--")
    profile_path, options, command = args[0], args[1:split], args[split + 1:]
    without = set()
    if options[:1] == ["--without"] and len(options) == 2:
        without = set(options[1].split(","))
    elif options:
        sys.exit(__doc__)
    profile = json.load(open(profile_path))
    assert profile["architectures"] == ["SCMP_ARCH_X86_64"], "x86_64 profiles only"
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    f = seccomp.SyscallFilter(defaction=seccomp.ERRNO(profile.get("defaultErrnoRet", 1)))
    for rule in profile["syscalls"]:
        assert rule["action"] == "SCMP_ACT_ALLOW", rule
        conditions = [
            seccomp.Arg(a["index"], OPS[a["op"]], a["value"], a.get("valueTwo", 0))
            for a in rule.get("args", [])
        ]
        for name in rule["names"]:
            if name not in without:
                f.add_rule(seccomp.ALLOW, name, *conditions)
    f.load()
    os.execvp(command[0], command)


main()
