from ebmflow.command import main

main()
