"""One module per Triton model of the repository (triton_repo/<model>/config.pbtxt names it as `handler`).

    videoneva       the entry point (decoupled): runs the request Flow over the models below
    feature_cache   visual features by media key (one instance shared by every entry instance)
    preprocess      media decode (sampled frames only) + CLIP preprocessing
    vision_encoder  frames → features; frames of queued requests encoded together
    llm             ids + prompt table → token ids, streamed (decoupled)

Each module holds its tensor contract (INPUTS, OUTPUTS), whether it is DECOUPLED, and
`make(params, bls)`, which returns its handler: `handler(inputs, call) -> outputs` on numpy
tensors (`call.send(tensors)` streams a response before the final one). A vision-style handler
may instead take a list of requests at once (`handler.batch`). The handlers import only what
their model needs and never the python backend itself: videoneva/serving/triton_model.py runs
them inside Triton, and the tests wire them together in one process.
"""
