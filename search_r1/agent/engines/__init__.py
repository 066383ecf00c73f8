"""Generation engines behind one interface (see ``base.Engine``)."""
