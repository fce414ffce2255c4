import sys

from nip_core.cli import main

sys.exit(main())
