"""Budget alert, allowance reset and webhook tasks (``tollgate.billing.*``, ``tollgate.webhooks.*``)."""
