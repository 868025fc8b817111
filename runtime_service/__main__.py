import sys

from runtime_service.main import main

sys.exit(main())
