"""`advise`: which strategy for my data, my parameter budget and my time — candidates sized to the budget,
each tuned on a carve-out of train by the sweep engine within a time plan, a report with the
recommendation and a runnable recipe (docs/advise.md).

    python -m partial_ft advise --recipe R [--budget B] [--time T] [--out DIR] [--train] [section.key=value ...]

Modules: candidates (sizing, the input checks), measure (one timed epoch), timeplan (what runs next),
tuning (a candidate's study on the sweep engine), table (rows, the recommendation rule), report
(advice.md, the plot, advised.yaml), state (continuing), run (the driver).
"""
