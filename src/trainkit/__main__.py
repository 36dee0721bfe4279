from trainkit.cli.main import main

main()
