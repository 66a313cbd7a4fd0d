"""Learning from live traffic: what `hotelbot serve --capture DIR` keeps (:mod:`.capture`, masked by
:mod:`.pii`), and the inbox people label it in (:mod:`.inbox`); `hotelbot prepare --add` merges the labels
into the training data (:func:`hotelbot_cli.data.add_examples`)."""
