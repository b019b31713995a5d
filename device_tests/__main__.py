"""``python -m edgepet.device_tests``: the harness where edgepet is installed.

``bench BUNDLE ...``  what ``edgepet bench`` does (used on ssh/adb devices);
``worker SPEC OUT``   one configuration in its own process (started by the harness).
"""

import sys

from edgepet.device_tests.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
