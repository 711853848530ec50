"""LLM explanations of a store's features and their scores (issue 14 §2), and Neuronpedia's
explanation exports in and the store out in Neuronpedia's format (§3).

``client.py`` talks to any OpenAI-compatible chat endpoint; ``delphi_prompts.py`` holds
EleutherAI Delphi's prompts verbatim and ``prompts.py`` builds and parses the messages;
``samples.py`` splits a feature's examples into shown and held out; ``run.py`` is the resumable
run; ``neuronpedia.py`` reads their explanation exports and writes their export format;
``serve.py`` serves the embedded GGUF with llama.cpp's server (``serve-llm``).

May import: ``explorer`` (store, explanations), httpx, tqdm.
"""
