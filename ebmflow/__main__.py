from ebmflow.cli import main

main()
