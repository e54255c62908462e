import sys

from orpheus_cli.main import main

sys.exit(main())
