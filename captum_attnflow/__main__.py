import sys

from captum_attnflow.cli import main

sys.exit(main())
