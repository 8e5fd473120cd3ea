from tests.bench.suite import main

main()
