from simfluence_cli.cli import main

main()
