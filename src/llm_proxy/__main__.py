from llm_proxy.cli import main

main()
