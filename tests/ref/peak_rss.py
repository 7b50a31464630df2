#!/usr/bin/env python3
"""Run a command and print its peak resident memory in KiB, two ways: the largest VmHWM read from
/proc/PID/status while it runs (polled every 2 ms; VmHWM only grows, so the last read is the peak up to
then), and the kernel's ru_maxrss when it is reaped. stdout of the command is discarded; its stderr goes
to the file given first.

  peak_rss.py STDERR_FILE PROGRAM ARGS...   ->  "<VmHWM KiB> <ru_maxrss KiB> <exit status>"
"""
import os
import subprocess
import sys
import time

err = open(sys.argv[1], "wb")
p = subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=err)
hwm = 0
while True:
    pid, status, ru = os.wait4(p.pid, os.WNOHANG)
    if pid:
        break
    try:
        with open("/proc/%d/status" % p.pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = max(hwm, int(line.split()[1]))
    except OSError:
        pass
    time.sleep(0.002)
print(hwm, ru.ru_maxrss, os.waitstatus_to_exitcode(status))
