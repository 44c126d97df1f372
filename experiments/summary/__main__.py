from experiments.summary import main

main()
