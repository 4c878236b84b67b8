from megaclass.cli import main

raise SystemExit(main())
