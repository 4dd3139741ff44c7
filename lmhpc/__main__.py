from lmhpc.cli import main

raise SystemExit(main())
