from forkproxy.proxy.cli import main

raise SystemExit(main())
