from transmute.cli import main

main()
