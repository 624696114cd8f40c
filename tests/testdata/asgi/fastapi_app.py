"""A FastAPI app for tests/asgi_test.go: validated JSON in and out."""
from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()


class Item(BaseModel):
    name: str
    price: float


@app.get('/items/{item_id}')
async def read_item(item_id: int, q: str = ''):
    return {'item_id': item_id, 'q': q}


@app.post('/items')
async def create_item(item: Item):
    return {'name': item.name, 'price_with_tax': round(item.price * 1.2, 2)}
