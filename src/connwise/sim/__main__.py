from connwise.sim.cli import main

main()
