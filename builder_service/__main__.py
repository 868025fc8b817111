import sys

from builder_service.main import main

sys.exit(main())
