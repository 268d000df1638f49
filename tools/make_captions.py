#!/usr/bin/env python3
"""Generate the English caption corpus shipped as `perfusion_core/data/captions.txt.gz`.

Perfusion needs the second moment C = E[e eᵀ] of text-encoder outputs over a large, varied set of captions.
No data set is downloaded: word lists by category and grammar templates make one here, in the mix of
alt-text, COCO-style sentences, long descriptions and Stable Diffusion prompt lists that users write.
Seeded and stdlib-only, so running it again gives the same file byte for byte.

    python tools/make_captions.py [--out PATH]
"""

from __future__ import annotations

import argparse
import gzip
import io
import random
import re
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "perfusion_core" / "data" / "captions.txt.gz"
SEED = 1234
COUNT = 24_000
MAX_WORDS = 60
WORD_RE = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")


def words(text: str) -> list[str]:
    """Split a comma-separated word list; entries may be several words and may span lines."""
    return [w.strip() for w in text.split(",") if w.strip()]


# --- people -------------------------------------------------------------------------------------------
PEOPLE = words("""baby, toddler, little boy, little girl, boy, girl, child, kid, teenager, teenage boy,
teenage girl, young man, young woman, man, woman, middle-aged man, middle-aged woman, old man, old woman,
elderly man, elderly woman, grandmother, grandfather, grandma, grandpa, person, student, lady, gentleman,
bride, groom, mother, father, mom, dad, couple, family, schoolgirl, schoolboy, college student, newborn,
senior citizen, retiree, commuter, pedestrian, stranger, neighbor, friend, toddler girl, toddler boy""")
JOBS = words("""doctor, nurse, surgeon, dentist, veterinarian, pharmacist, paramedic, firefighter,
police officer, soldier, pilot, flight attendant, sailor, fisherman, farmer, gardener, florist, baker, chef,
cook, butcher, waiter, waitress, bartender, barista, cashier, shopkeeper, mechanic, electrician, plumber,
carpenter, builder, construction worker, welder, blacksmith, potter, painter, sculptor, photographer, artist,
musician, singer, guitarist, pianist, violinist, drummer, dancer, ballerina, actor, actress, magician, clown,
juggler, acrobat, teacher, professor, scientist, chemist, biologist, astronomer, astronaut, engineer,
architect, programmer, designer, writer, poet, journalist, reporter, librarian, lawyer, judge, accountant,
banker, businessman, businesswoman, secretary, receptionist, mail carrier, delivery driver, taxi driver,
bus driver, truck driver, train conductor, lifeguard, coach, athlete, runner, cyclist, swimmer, surfer,
skateboarder, snowboarder, skier, climber, hiker, boxer, wrestler, tennis player, soccer player,
basketball player, baseball player, golfer, jockey, cowboy, cowgirl, knight, king, queen, prince, princess,
monk, nun, priest, wizard, witch, pirate, ninja, samurai, viking, explorer, detective, spy, tourist, traveler,
shepherd, beekeeper, lumberjack, miner, tailor, seamstress, hairdresser, barber, fashion model, street vendor,
janitor, security guard, zookeeper, park ranger, nanny, referee, umpire, goalkeeper, cheerleader, gymnast,
figure skater, marathon runner, yoga instructor, fitness trainer, street musician, violin teacher,
tattoo artist, graffiti artist, film director, cameraman, news anchor, weather forecaster, scuba diver,
mountaineer, lab technician, shop assistant, ice cream vendor, flower seller, fruit seller, fishmonger,
cheesemaker, winemaker, brewer, jeweler, watchmaker, glassblower, weaver, knitter, calligrapher,
archaeologist, geologist, botanist, zoologist, meteorologist, mathematician, philosopher, historian,
economist, politician, mayor, diplomat, general, captain, admiral, sheriff, gladiator, pharaoh, emperor,
empress, duchess, jester, minstrel, alchemist, blacksmith's apprentice, superhero, cyborg, android""")
PERSON_MOODS = words("""smiling, laughing, happy, sad, serious, pensive, thoughtful, tired, excited,
surprised, confident, nervous, relaxed, focused, determined, bored, shy, proud, angry, worried, joyful,
cheerful, calm, curious, sleepy, grumpy, cheeky, friendly, lonely, elegant, stylish, handsome, beautiful,
cute, exhausted, sweaty, muddy, soaked, dreamy, frowning, puzzled, amused, anxious, hopeful, content""")
JOB_AGES = words("young, old, elderly, middle-aged, female, male, teenage, retired, famous, local, tall")
HAIR_LENGTH = words("long, short, curly, wavy, straight, braided, messy, shoulder-length, cropped, spiky, "
                    "flowing, tousled, slicked-back, thick, thinning")
HAIR_COLOR = words("blonde, brown, black, red, gray, white, silver, auburn, pink, blue, purple, ginger, "
                   "dark, light brown, platinum")
FEATURES = words("""a beard, a long beard, a mustache, freckles, glasses, round glasses, a ponytail, a bun,
dreadlocks, tattoos, a nose ring, rosy cheeks, a big smile, a broken arm, a backpack, a walking stick,
a headset, earbuds, a name tag, a camera around the neck, a flower crown, face paint, a bandage,
headphones on, a cast on one leg, a shopping bag, a briefcase, a guitar case""")
GARMENTS = words("""t-shirt, shirt, blouse, sweater, hoodie, cardigan, jacket, leather jacket, denim jacket,
coat, trench coat, raincoat, parka, puffer jacket, vest, suit, tuxedo, dress, sundress, evening gown,
wedding dress, skirt, kimono, sari, robe, bathrobe, apron, uniform, tank top, polo shirt, turtleneck, blazer,
poncho, cape, cloak, tunic, jumpsuit, swimsuit, bikini, wetsuit, tracksuit, lab coat, overcoat, waistcoat,
sweatshirt, flannel shirt, hawaiian shirt, jersey, leotard, tutu, gown, scarf, tie, bow tie, hat, cap,
baseball cap, beanie, fedora, cowboy hat, straw hat, sun hat, beret, top hat, helmet, hard hat, headscarf,
bandana, turban, crown, tiara, veil, mask, necklace, pearl necklace, wristwatch, belt""")
PLURAL_WEAR = words("""jeans, shorts, trousers, overalls, leggings, pajamas, sneakers, boots, rain boots,
hiking boots, cowboy boots, sandals, flip-flops, high heels, glasses, sunglasses, gloves, mittens, goggles,
earrings, slippers, loafers, sweatpants, cargo pants, suspenders""")

# --- animals ------------------------------------------------------------------------------------------
PETS = words("""dog, puppy, cat, kitten, rabbit, bunny, hamster, guinea pig, parrot, goldfish,
golden retriever, labrador, german shepherd, poodle, beagle, bulldog, french bulldog, dachshund, husky, corgi,
chihuahua, pug, border collie, dalmatian, greyhound, shiba inu, terrier, jack russell terrier, great dane,
rottweiler, doberman, pomeranian, samoyed, sheepdog, cocker spaniel, tabby cat, siamese cat, persian cat,
maine coon, ragdoll cat, sphynx cat, bengal cat, ferret, cockatiel, budgie, tortoise, hedgehog, chinchilla""")
FARM_ANIMALS = words("""horse, pony, foal, cow, calf, bull, ox, pig, piglet, sheep, lamb, goat, donkey, mule,
llama, alpaca, camel, chicken, hen, rooster, chick, duck, duckling, goose, turkey, water buffalo, yak""")
WILD_ANIMALS = words("""squirrel, chipmunk, raccoon, fox, red fox, arctic fox, wolf, coyote, bear, brown bear,
grizzly bear, polar bear, black bear, panda, red panda, koala, kangaroo, wallaby, lion, lioness, tiger,
white tiger, leopard, snow leopard, cheetah, jaguar, lynx, bobcat, cougar, elephant, baby elephant, rhino,
hippo, giraffe, zebra, gorilla, chimpanzee, orangutan, monkey, baboon, lemur, sloth, otter, beaver, badger,
skunk, moose, deer, fawn, stag, elk, reindeer, bison, wild boar, bat, mole, mouse, rat, armadillo, anteater,
meerkat, hyena, warthog, antelope, gazelle, wildebeest, porcupine, opossum, weasel, mongoose, platypus, tapir,
okapi""")
BIRDS = words("""bird, sparrow, robin, blue jay, cardinal, crow, raven, magpie, pigeon, dove, seagull,
pelican, flamingo, swan, peacock, parrot, macaw, cockatoo, owl, barn owl, snowy owl, eagle, bald eagle, hawk,
falcon, vulture, hummingbird, woodpecker, kingfisher, heron, stork, crane, penguin, ostrich, emu, puffin,
toucan, canary, finch, goldfinch, swallow, starling, wren, mallard, albatross, cormorant, condor""")
SEA_ANIMALS = words("""dolphin, whale, humpback whale, blue whale, orca, shark, great white shark, octopus,
squid, jellyfish, starfish, crab, lobster, shrimp, seahorse, sea turtle, seal, sea lion, walrus, manatee, koi,
salmon, trout, clownfish, pufferfish, stingray, manta ray, eel, angelfish, swordfish, tuna, narwhal,
sea otter, hermit crab, coral fish""")
SMALL_CREATURES = words("""butterfly, moth, bee, bumblebee, honeybee, wasp, ant, ladybug, dragonfly,
grasshopper, cricket, beetle, firefly, caterpillar, spider, snail, scorpion, worm, frog, tree frog, toad,
lizard, gecko, iguana, chameleon, snake, cobra, python, rattlesnake, crocodile, alligator, salamander, newt,
praying mantis, centipede, stick insect""")
CREATURES = words("""dragon, unicorn, phoenix, griffin, mermaid, fairy, elf, dwarf, goblin, troll, robot,
alien, ghost, vampire, werewolf, dinosaur, t-rex, triceratops, velociraptor, mammoth, sabertooth tiger, yeti,
kraken, centaur, minotaur, winged horse, sea serpent, golem, gnome, giant, ogre, sphinx, hydra, kitsune,
basilisk, teddy bear, snowman, scarecrow, gingerbread man""")
ANIMALS = PETS + FARM_ANIMALS + WILD_ANIMALS + BIRDS + SEA_ANIMALS + SMALL_CREATURES + CREATURES
ANIMAL_ADJ = words("""cute, adorable, fluffy, tiny, small, little, big, huge, giant, baby, young, old, sleepy,
playful, curious, happy, grumpy, hungry, lazy, wild, fierce, majestic, friendly, shy, wet, muddy, scruffy,
chubby, fat, skinny, spotted, striped, long-haired, short-haired, wise, noble, proud, lonely, frightened,
alert, graceful, clumsy, funny, angry, calm, gentle, sick, injured, stray, rescued, well-groomed""")
ANIMAL_COLORS = words("""black, white, brown, gray, golden, ginger, orange, black and white, brown and white,
spotted, striped, tan, cream-colored, silver, speckled, red, blue, green, yellow, pink, purple, rainbow""")
LAND_ACTIONS = words("""sleeping, running, walking, lying down, sitting, standing, playing, resting, yawning,
hiding, drinking water, eating, looking at the camera, curled up, stretching, jumping, sniffing the air,
rolling in the grass, chasing {its} tail, taking a nap, basking in the sun, peeking out, waiting patiently,
staring into the distance, licking {its} paw, scratching {its} ear, wagging {its} tail, grazing, wandering,
climbing, digging, howling, roaring, splashing in a puddle, hunting, prowling, crossing the road,
looking out the window, sitting on a sofa, sleeping on a bed, playing with a ball, carrying a stick""")
BIRD_ACTIONS = words("""perched on a branch, flying, soaring, gliding, sitting on a fence,
standing on one leg, pecking at seeds, spreading {its} wings, singing, preening {its} feathers, taking off,
landing, building a nest, feeding {its} chicks, wading in the water, sitting on a wire, perched on a rooftop,
diving into the water, swimming on a pond, looking for food, catching a fish""")
SEA_ACTIONS = words("""swimming, floating, diving, jumping out of the water, resting on the sea floor,
hiding among the coral, swimming near the surface, gliding through the water, breaching, feeding,
swimming in a tank, drifting in the current, swimming in a school""")
SMALL_ACTIONS = words("""crawling, resting, sitting on a flower, climbing a leaf, hiding under a rock,
crawling on a leaf, sitting on a stone, basking on a rock, drinking nectar, hanging from a twig,
spinning a web, flying over a meadow, sitting on a lily pad, climbing a tree trunk""")
CREATURE_ACTIONS = words("""flying over a castle, guarding a treasure, breathing fire, standing in the mist,
sleeping in a cave, walking through a forest, dancing in the moonlight, reading a book, drinking tea,
wearing a tiny hat, playing chess, riding a bicycle, sitting on a throne, waving hello, casting a spell,
playing the guitar, cooking breakfast, holding an umbrella, watching the stars, hiding behind a tree""")
ANIMAL_GROUPS = {
    "herd": words("""horse, cow, bull, sheep, goat, llama, alpaca, camel, water buffalo, yak, elephant, zebra,
giraffe, deer, elk, reindeer, bison, antelope, gazelle, wildebeest, moose"""),
    "flock": BIRDS + ["sheep", "goose", "chicken", "duck"],
    "pack": ["wolf", "dog", "coyote", "husky", "hyena"],
    "pride": ["lion", "lioness"],
    "school": words("dolphin, clownfish, koi, salmon, trout, tuna, angelfish, coral fish, shark, jellyfish"),
    "swarm": words("bee, bumblebee, honeybee, wasp, ant, firefly, butterfly, moth, dragonfly, grasshopper"),
    "litter": ["puppy", "kitten", "piglet", "bunny"],
}

# --- things ------------------------------------------------------------------------------------------
HANDHELD = words("""mug, cup, teacup, glass, bottle, jar, bowl, plate, vase, teapot, kettle, spoon, fork,
knife, ladle, whisk, frying pan, saucepan, cutting board, rolling pin, basket, bucket, box, crate, suitcase,
backpack, handbag, purse, wallet, umbrella, lamp, lantern, candle, candlestick, clock, alarm clock,
wristwatch, mirror, picture frame, pillow, cushion, blanket, quilt, towel, book, notebook, diary, magazine,
newspaper, map, globe, envelope, letter, postcard, pencil, pen, fountain pen, crayon, paintbrush, marker,
ruler, eraser, stapler, laptop, keyboard, computer mouse, smartphone, phone, tablet, camera, film camera,
radio, speaker, microphone, remote control, game controller, flashlight, teddy bear, doll, kite, ball,
balloon, yo-yo, puzzle, toy car, toy robot, toy train, rubber duck, action figure, board game, chess board,
hammer, screwdriver, wrench, saw, drill, shovel, rake, axe, watering can, toolbox, tape measure, paint can,
broom, mop, sponge, hose, baseball bat, tennis racket, skateboard, surfboard, snowboard, frisbee, football,
basketball, soccer ball, volleyball, golf club, hockey stick, fishing rod, dumbbell, yoga mat, jump rope,
boxing glove, compass, telescope, microscope, hourglass, magnifying glass, trophy, sword, shield, key,
padlock, rope, bell, horseshoe, feather, seashell, pinecone, pebble, crystal, gemstone, coin, ring, necklace,
bracelet, earring, brooch, pocket watch, music box, snow globe, jewelry box, treasure chest, gift box,
present, shopping bag, paper bag, tote bag, lunch box, thermos, water bottle, wine glass, champagne flute,
beer mug, coffee cup, paper cup, straw, napkin, salt shaker, pepper grinder, cookie jar, bread basket,
fruit bowl, flower pot, birdhouse, bird feeder, wind chime, dreamcatcher, hand fan, walking cane, top hat,
pipe, cigar, matchbox, lighter, candle holder, sketchbook, easel, canvas, palette, clipboard, calculator,
calendar, sticky note, hard drive, usb stick, battery, light bulb, extension cord, hair dryer, hairbrush,
comb, toothbrush, razor, perfume bottle, lipstick, makeup brush, nail polish, soap bar, bath bomb,
potted cactus, origami crane, paper airplane, kaleidoscope, abacus, metronome, tuning fork, violin bow,
drumstick, sock puppet, piggy bank, pair of dice, playing card, deck of cards, photo album, vinyl record,
cassette tape, floppy disk, pager, rotary phone, typewriter, sewing kit, spool of thread, ball of yarn,
knitting needle, pincushion, thimble, button, zipper, safety pin, paper clip, rubber band, stamp""")
FURNITURE = words("""chair, armchair, sofa, couch, bench, stool, bar stool, table, dining table, desk, bed,
bunk bed, crib, bookshelf, bookcase, cabinet, dresser, wardrobe, nightstand, coffee table, side table,
rocking chair, hammock, fireplace, chandelier, ceiling fan, floor lamp, desk lamp, bathtub, sink, toilet,
shower, refrigerator, fridge, oven, stove, microwave, dishwasher, washing machine, toaster, blender,
coffee maker, espresso machine, sewing machine, record player, jukebox, piano, grand piano, grandfather clock,
birdcage, aquarium, fish tank, planter, trash can, rug, carpet, curtain, mirror, television, computer,
monitor, printer, shelf, ottoman, futon, recliner, chaise lounge, vanity, hat stand, coat rack,
umbrella stand, radiator, air conditioner, space heater, window seat, stove top, kitchen island, pantry,
spice rack, wine rack, dish rack, laundry basket, ironing board, vacuum cleaner, lava lamp, globe, tapestry,
wall clock, painting, poster, houseplant, potted plant""")
INSTRUMENTS = words("""guitar, acoustic guitar, electric guitar, bass guitar, violin, cello, double bass,
piano, drums, drum kit, trumpet, saxophone, flute, harp, accordion, ukulele, banjo, harmonica, tambourine,
xylophone, clarinet, trombone, tuba, french horn, oboe, bagpipes, sitar, mandolin, lute, synthesizer,
keyboard, bongos, cymbals, triangle, recorder, didgeridoo, marimba, organ, bugle""")
STREET_THINGS = words("""fire hydrant, parking meter, street lamp, lamppost, traffic light, stop sign,
bus stop, phone booth, fountain, statue, sculpture, mailbox, bench, newsstand, food truck, bicycle rack,
billboard, neon sign, street sign, road sign, traffic cone, manhole cover, drinking fountain, flagpole,
clock tower, monument, obelisk, archway, gazebo, bandstand, kiosk, vending machine, telephone pole,
water tower, windmill, wind turbine, scarecrow, signpost, well, wooden fence, stone wall, picket fence,
garden gate, iron gate, staircase, escalator, elevator, revolving door, front door, wooden door, doorway,
window, stained glass window, balcony railing, chimney, weather vane, satellite dish, solar panel""")
VEHICLES_LAND = words("""car, sports car, sedan, hatchback, convertible, pickup truck, truck, fire truck,
ambulance, police car, taxi, cab, bus, school bus, double-decker bus, van, camper van, minivan, motorcycle,
scooter, moped, tractor, bulldozer, excavator, forklift, train, freight train, steam locomotive, tram,
streetcar, subway train, limousine, jeep, suv, dune buggy, snowmobile, race car, vintage car, muscle car,
electric car, delivery truck, garbage truck, cement mixer, tow truck, ice cream truck, horse-drawn carriage,
wagon, cart, golf cart, monster truck, tank, go-kart, rickshaw, tuk-tuk, trolley, food truck, cable car,
station wagon, coupe, roadster, armored car, campervan""")
VEHICLES_CYCLE = words("""bicycle, bike, mountain bike, road bike, tricycle, tandem bicycle, electric scooter,
kick scooter, unicycle, cargo bike, penny-farthing, bmx bike, fixed-gear bike, vintage bicycle""")
VEHICLES_WATER = words("""boat, sailboat, yacht, canoe, kayak, rowboat, ferry, cruise ship, fishing boat,
gondola, submarine, tugboat, jet ski, speedboat, motorboat, pirate ship, sailing ship, steamboat, houseboat,
raft, catamaran, cargo ship, container ship, paddle boat, lifeboat, junk, dhow, longboat""")
VEHICLES_AIR = words("""airplane, plane, jet, jumbo jet, passenger jet, fighter jet, helicopter,
hot air balloon, blimp, airship, glider, seaplane, biplane, propeller plane, rocket, spaceship, space shuttle,
drone, paraglider, flying saucer""")
VEHICLE_ADJ = words("""red, blue, white, black, silver, yellow, green, orange, old, new, vintage, rusty,
shiny, battered, dented, abandoned, classic, modern, futuristic, tiny, huge, electric, muddy, dusty,
brand-new, broken-down, luxury, toy, miniature, colorful, sleek, retro, wrecked, restored""")
LAND_DOING = words("""parked on a quiet street, driving down a highway, stuck in traffic,
parked in front of a house, crossing a bridge, driving through the desert, speeding along a coastal road,
parked next to a fire hydrant, covered in snow, driving on a dirt road, waiting at a red light,
parked in a garage, driving through the rain, rusting in a field, on a mountain road, at a gas station,
driving through a forest, on display at a car show, turning a corner, parked outside a diner""")
CYCLE_DOING = words("""leaning against a wall, parked next to a lamppost, chained to a fence,
lying in the grass, with a basket full of flowers, parked by a canal, on a cobblestone street, covered in mud,
in a bike lane""")
WATER_DOING = words("""sailing on the ocean, docked in a harbor, floating on a calm lake, moored at a pier,
sailing at sunset, crossing a bay, tied to a wooden dock, on a river, in rough seas, anchored off an island,
drifting in the fog, pulled up on the beach, navigating a canal""")
AIR_DOING = words("""flying over the clouds, taking off from a runway, landing at an airport,
flying over a city, hovering over the sea, flying over mountains, against a blue sky, in a stormy sky,
parked in a hangar, above a desert, leaving a contrail in the sky, flying at sunset""")

# --- food -------------------------------------------------------------------------------------------
FRUIT_VEG = words("""apple, green apple, banana, orange, lemon, lime, pear, peach, plum, apricot, cherry,
strawberry, blueberry, raspberry, blackberry, grape, watermelon, melon, cantaloupe, pineapple, mango, papaya,
kiwi, coconut, pomegranate, fig, avocado, tomato, cherry tomato, potato, sweet potato, carrot, onion,
red onion, garlic bulb, cucumber, bell pepper, chili pepper, jalapeno, eggplant, zucchini, pumpkin, squash,
radish, beet, turnip, cabbage, cauliflower, lettuce, artichoke, mushroom, corn cob, pea pod, lychee,
passion fruit, dragon fruit, persimmon, grapefruit, tangerine, clementine, nectarine, starfruit, durian,
jackfruit, guava, olive, date, quince, rhubarb stalk, leek, celery stalk, ginger root""")
DISHES_COUNT = words("""egg, boiled egg, fried egg, sandwich, club sandwich, hamburger, cheeseburger,
veggie burger, hot dog, pizza, taco, burrito, donut, bagel, croissant, muffin, cupcake, cookie,
chocolate chip cookie, cake, birthday cake, wedding cake, cheesecake, pie, apple pie, tart, pretzel, waffle,
pancake, crepe, dumpling, sushi roll, spring roll, baguette, sausage, steak, drumstick, lollipop, candy bar,
chocolate bar, ice cream cone, popsicle, macaron, brownie, cinnamon roll, scone, pastry, bun, burger,
omelette, quesadilla, kebab, empanada, samosa, meatball, slice of pizza, slice of cake, slice of bread,
loaf of bread, wedge of cheese, bowl of soup, bowl of ramen, bento box, pot pie, calzone, churro, eclair,
profiterole, gingerbread cookie, candy cane, cream puff, fortune cookie, egg roll, gyoza, onigiri, bao bun,
hot cross bun, sourdough loaf, banana split, sundae, milkshake, smoothie bowl, poke bowl, burrito bowl,
grilled cheese sandwich, lobster roll""")
DISHES_MASS = words("""spaghetti, pasta, rice, fried rice, noodles, ramen, soup, tomato soup, curry, stew,
chili, salad, fruit salad, caesar salad, oatmeal, cereal, porridge, mashed potatoes, french fries,
scrambled eggs, bacon, pancakes, waffles, sushi, dumplings, tacos, nachos, popcorn, cookies, strawberries,
cherries, grapes, olives, nuts, almonds, peanuts, berries, vegetables, roasted vegetables, chicken wings,
fried chicken, grilled salmon, shrimp, lasagna, risotto, paella, pad thai, pho, dim sum, falafel, hummus,
guacamole, salsa, cheese, ice cream, yogurt, granola, chocolate, candy, macarons, chicken curry, beef stew,
fish and chips, bangers and mash, mac and cheese, spaghetti and meatballs, pulled pork, barbecue ribs,
roast chicken, roast beef, tofu, tempura, sashimi, bibimbap, kimchi, couscous, tabbouleh, quinoa, polenta,
gnocchi, ravioli, tortellini, carbonara, pesto pasta, minestrone, clam chowder, gazpacho, borscht, goulash,
ratatouille, moussaka, tiramisu, panna cotta, creme brulee, apple crumble, chocolate mousse, pudding, jelly,
jam, honey, butter, toast, avocado toast, french toast, eggs benedict, hash browns, baked beans, sausages,
meatballs, cupcakes, donuts, bagels, croissants, muffins, pastries, crackers, chips, pretzels, sweets,
gummy bears, cotton candy, caramel popcorn""")
DRINKS = words("""coffee, black coffee, iced coffee, tea, green tea, herbal tea, chai, matcha, espresso,
latte, cappuccino, hot chocolate, orange juice, apple juice, lemonade, milk, chocolate milk, smoothie, water,
sparkling water, red wine, white wine, rose wine, beer, craft beer, champagne, cider, soda, iced tea,
bubble tea, kombucha, whiskey, sake, coconut water, mint tea, eggnog, mulled wine""")
DRINK_VESSELS = words("cup, mug, glass, bottle, pitcher, jug, can, carafe, thermos, teapot, flask, jar")
FOOD_ADJ = words("""fresh, ripe, juicy, delicious, tasty, spicy, sweet, sour, salty, crispy, crunchy, creamy,
cheesy, homemade, grilled, roasted, fried, baked, steamed, boiled, raw, sliced, diced, chopped, stuffed,
frozen, melted, hot, cold, warm, steaming, half-eaten, freshly baked, organic, vegan, gourmet, healthy,
colorful, rustic, traditional, giant, mini, glazed, frosted, sugary, buttery, golden, burnt, smoky, tangy,
savory, moldy, rotten, overripe, unripe, green, red, yellow, chocolate-covered, caramelized""")
SERVING = words("""plate, bowl, tray, platter, basket, skillet, pan, pot, lunch box, paper plate,
ceramic dish, glass bowl, baking dish, casserole dish, cast iron skillet, wok, saucer, dish, box, tin, cup,
jar""")
FOOD_TAGS = words("""food photography, top view, flat lay, close up, studio shot, natural light, rustic style,
menu photo, overhead shot, restaurant quality, appetizing, high resolution""")
SERVE_ON = words("""plate, tray, platter, cutting board, wooden board, slate board, baking sheet,
picnic blanket, banana leaf, napkin, paper plate, marble slab, cake stand, serving board, rustic table,
dinner plate""")

# --- plants ------------------------------------------------------------------------------------------
FLOWERS = words("""rose, tulip, daisy, sunflower, lily, orchid, lavender, poppy, peony, daffodil, iris, lotus,
carnation, hydrangea, chrysanthemum, dahlia, magnolia, cherry blossom, marigold, violet, hibiscus, jasmine,
gardenia, bluebell, dandelion, clover, water lily, lilac, camellia, anemone, gerbera daisy, zinnia, foxglove,
snapdragon, cornflower, forget-me-not, buttercup, primrose, crocus, hyacinth, amaryllis, freesia, calla lily,
bird of paradise, protea, wisteria, bougainvillea, azalea, camomile, rhododendron, begonia, geranium, petunia,
pansy, morning glory, thistle, heather, aster""")
PLANTS = words("""fern, cactus, succulent, aloe plant, bonsai tree, palm tree, oak tree, maple tree,
pine tree, birch tree, willow tree, weeping willow, cypress tree, redwood, baobab tree, apple tree,
olive tree, cherry tree, lemon tree, bamboo stalk, reed, wildflower, snake plant, monstera, houseplant,
potted plant, bush, hedge, vine, toadstool, fig tree, fir tree, spruce, cedar, elm tree, ash tree, beech tree,
sycamore, chestnut tree, eucalyptus tree, acacia tree, banyan tree, mangrove, sapling, rubber plant,
spider plant, peace lily, orchid, jade plant, venus flytrap, herb garden, basil plant, mint plant,
rosemary bush, tomato plant, sunflower, tumbleweed, kelp plant""")
PLANT_MASS = words("""moss, grass, tall grass, wheat, ivy, clover, ferns, wildflowers, leaves, autumn leaves,
fallen leaves, pine needles, petals, rose petals, vines, reeds, bamboo, lavender, seaweed, weeds""")

# --- places ------------------------------------------------------------------------------------------
IN_PLACES = words("""forest, pine forest, rainforest, jungle, meadow, field, wheat field, sunflower field,
lavender field, rice paddy, vineyard, orchard, desert, valley, canyon, cave, swamp, marsh, lagoon, bay,
harbor, park, city park, garden, botanical garden, backyard, front yard, courtyard, playground, kitchen,
living room, bedroom, bathroom, dining room, attic, basement, hallway, nursery, home office, study,
laundry room, garage, greenhouse, sunroom, loft, studio apartment, hotel room, hotel lobby, lobby,
waiting room, conference room, library, classroom, office, factory, warehouse, workshop, laboratory, church,
cathedral, temple, mosque, monastery, castle, palace, museum, art gallery, theater, cinema, concert hall,
stadium, gym, swimming pool, school, hospital, supermarket, grocery store, bakery, cafe, coffee shop,
restaurant, diner, pub, bar, bookstore, shopping mall, market, train station, subway station, airport, city,
village, small town, alley, alleyway, snowstorm, crowd, cabin, log cabin, cottage, farmhouse, barn, mansion,
tent, tree house, igloo, treehouse, field of flowers, clearing, bamboo grove, olive grove, cornfield,
pumpkin patch, ballroom, throne room, dungeon, tavern, space station, spaceship, underwater city,
ruined temple, abandoned factory, subway car, train carriage, elevator, stairwell, corridor, kitchen garden,
flower shop, toy store, music shop, antique shop, barbershop, hair salon, tattoo parlor, laundromat,
gas station, car wash, parking garage, recording studio, dance studio, art studio, photo studio,
pottery studio, bakery kitchen, locker room, cafeteria, lecture hall, courtroom, chapel, crypt, observatory,
planetarium, aquarium, zoo, amusement park, water park, circus tent, fairground, farmers market, night market,
fish market, flea market, flower market, vegetable garden, rose garden, zen garden, japanese garden,
hedge maze""")
ON_PLACES = words("""beach, sandy beach, rocky beach, shore, shoreline, coast, cliff, cliff edge, hill,
hillside, mountain, mountain top, mountain path, trail, hiking trail, street, city street, main street,
side street, sidewalk, crosswalk, highway, country road, dirt road, gravel road, bridge, stone bridge, pier,
dock, boardwalk, rooftop, balcony, terrace, patio, porch, front porch, deck, lawn, riverbank, lake shore,
frozen lake, ice rink, tennis court, basketball court, soccer field, baseball field, golf course, race track,
running track, train platform, subway platform, runway, farm, ranch, island, tropical island, sand dune,
glacier, iceberg, volcano, stage, dance floor, red carpet, catwalk, rooftop terrace, windowsill,
kitchen counter, park bench, fire escape, staircase, spiral staircase, escalator, ship deck, sailboat deck,
cobblestone street, wooden bridge, suspension bridge, rope bridge, mossy log, tree branch, picnic blanket,
snowy hill, ski slope, sports field, parking lot, campus lawn, village square""")
AT_PLACES = words("""airport, train station, bus stop, market, farmers market, cafe, museum, zoo, beach, lake,
pond, river, waterfall, seaside, harbor, marina, campsite, bus station, gas station, bakery, restaurant, bar,
concert, festival, carnival, wedding, birthday party, graduation ceremony, picnic, barbecue, music festival,
street fair, flea market, swimming pool, gym, library, park, desk, table, kitchen table, counter, window,
door, gate, crossroads, edge of a cliff, foot of a mountain, end of the pier, top of the stairs,
bottom of the stairs, edge of the forest, water's edge""")
LANDSCAPES = words("""beach, sandy beach, rocky coast, cliff, mountain, mountain range, valley, canyon,
desert, forest, pine forest, birch forest, rainforest, jungle, meadow, field, wheat field, sunflower field,
lavender field, vineyard, orchard, farmland, prairie, savanna, tundra, glacier, iceberg, volcano, waterfall,
river, stream, creek, lake, mountain lake, pond, swamp, marsh, lagoon, bay, harbor, island, ocean, sea,
coral reef, cave, hill, plateau, fjord, oasis, geyser, hot spring, snowy peak, countryside, coastline,
salt flat, bamboo forest, redwood forest, autumn forest, frozen lake, ice field, crater, gorge, estuary,
delta, wetland, heathland, moor, steppe, mesa, archipelago, atoll, lake shore, riverbank, mountain pass,
alpine meadow, tea plantation, olive grove, cherry orchard, tulip field, poppy field, cornfield""")
LANDSCAPES_PLURAL = words("""sand dunes, snowy mountains, rolling hills, rice terraces, badlands, cliffs,
wetlands, green hills, rocky hills, mountain peaks, sea cliffs, rock formations, hot springs, salt marshes""")
BUILDINGS = words("""house, old house, wooden house, stone house, brick house, skyscraper, apartment building,
townhouse, tower, lighthouse, windmill, cabin, log cabin, cottage, farmhouse, barn, mansion, villa, castle,
palace, fortress, church, cathedral, temple, pagoda, mosque, monastery, chapel, museum, library,
train station, bridge, observatory, treehouse, bungalow, chalet, hut, shack, greenhouse, warehouse, factory,
power plant, stadium, opera house, theater, city hall, courthouse, school, university building, hospital,
hotel, motel, diner, gas station, shop, bakery, cafe, bookstore, pub, inn, tavern, ruined abbey,
ruined castle, pyramid, colosseum, amphitheater, aqueduct, watchtower, clock tower, bell tower, minaret, dome,
gazebo, pavilion, boathouse, beach hut, houseboat, tiny house, shipping container home, igloo, yurt, teepee,
tent, glass house, modern house, victorian house, haunted house, abandoned house, gothic cathedral,
medieval castle, japanese temple, greek temple, roman villa, art deco building, brutalist building,
glass skyscraper, office building, parking garage""")
CITIES = words("""Paris, London, New York, Tokyo, Kyoto, Osaka, Rome, Venice, Florence, Milan, Naples,
Barcelona, Madrid, Seville, Lisbon, Porto, Berlin, Munich, Hamburg, Amsterdam, Brussels, Bruges, Prague,
Vienna, Budapest, Warsaw, Krakow, Istanbul, Athens, Dubai, Cairo, Marrakech, Cape Town, Nairobi, Lagos,
Mumbai, Delhi, Jaipur, Bangkok, Singapore, Hong Kong, Shanghai, Beijing, Seoul, Taipei, Manila, Jakarta,
Sydney, Melbourne, Auckland, Vancouver, Toronto, Montreal, Quebec City, Chicago, San Francisco, Los Angeles,
Seattle, Boston, Miami, New Orleans, Las Vegas, Washington, Havana, Mexico City, Rio de Janeiro, Buenos Aires,
Lima, Santiago, Cusco, Reykjavik, Oslo, Stockholm, Copenhagen, Helsinki, Edinburgh, Dublin, Moscow,
Saint Petersburg, Jerusalem, Hanoi, Kathmandu, Zurich, Geneva, Salzburg, Dubrovnik, Valletta, Tallinn, Riga,
Bergen, Hobart, Kyiv, Tbilisi, Baku, Doha, Muscat, Petra, Agra""")
REGIONS = words("""Iceland, Norway, Scotland, Ireland, Wales, Switzerland, the Alps, Italy, Tuscany, Provence,
Japan, China, India, Nepal, Tibet, Peru, Patagonia, New Zealand, Australia, Kenya, Tanzania, Morocco, Egypt,
Greece, Santorini, Croatia, Vietnam, Thailand, Indonesia, Bali, Hawaii, Alaska, Canada, Mexico, Brazil,
Argentina, Chile, the Sahara, the Himalayas, the Andes, the Rocky Mountains, Yosemite, Arizona, Utah,
Colorado, California, Texas, the Scottish Highlands, the Dolomites, Lapland, Siberia, Mongolia, Madagascar,
the Amazon, Cornwall, Normandy, Bavaria, Andalusia, Sicily, Sardinia, the Lake District, the Outback,
the Serengeti, Namibia, Botswana, Jordan, Oman, the Maldives, Fiji, Tahiti, Costa Rica, Guatemala, Cuba,
Jamaica, Finland, Sweden, Denmark, the Netherlands, Portugal, Spain, France, Germany, Austria, Poland,
Romania, Transylvania, Turkey, Cappadocia, Georgia, Uzbekistan, Kyoto prefecture, Hokkaido, Vermont, Maine,
Oregon, Montana, Wyoming, the Grand Canyon, Monument Valley, Death Valley""")
ROOMS = words("""living room, bedroom, kitchen, bathroom, dining room, attic, basement, hallway, nursery,
home office, study, laundry room, garage, greenhouse, sunroom, loft, studio apartment, hotel room, lobby,
waiting room, conference room, library, classroom, office, workshop, laboratory, ballroom, throne room, cafe,
restaurant, bar, bakery, bookstore, art studio, dance studio, recording studio, walk-in closet, pantry,
wine cellar, guest room, kids' room, teenager's bedroom, reading nook, game room, home gym, mudroom, porch,
gallery, chapel, train carriage, cabin interior, ship cabin""")
ROOM_STYLES = words("""cozy, modern, minimalist, scandinavian, rustic, industrial, bohemian, vintage,
luxurious, mid-century modern, victorian, japanese, mediterranean, farmhouse, messy, tidy, spacious, cramped,
bright, dark, sunny, cluttered, elegant, shabby, colorful, all-white, dimly lit, empty, abandoned, futuristic,
retro, art deco, gothic, cottagecore, maximalist, traditional, contemporary, eclectic""")

# --- descriptors -------------------------------------------------------------------------------------
COLORS = words("""red, orange, yellow, green, blue, purple, pink, brown, black, white, gray, grey, beige,
cream, ivory, gold, golden, silver, bronze, copper, teal, turquoise, cyan, magenta, maroon, burgundy, crimson,
scarlet, navy, navy blue, sky blue, light blue, dark blue, royal blue, baby blue, emerald, emerald green,
olive, olive green, lime green, mint green, forest green, sage green, dark green, light green, lavender,
lilac, violet, indigo, mustard, mustard yellow, lemon yellow, peach, coral, salmon pink, rust, rust-colored,
tan, khaki, charcoal, pastel pink, hot pink, fuchsia, amber, ochre, sepia, multicolored, rainbow-colored,
striped, polka dot, plaid, checkered, floral, black and white, red and white, blue and white, pale,
bright red, deep blue, dark red, light pink, off-white, jet black, snow white, chocolate brown, caramel,
honey-colored, wine red, cherry red, cobalt blue, aquamarine, periwinkle, mauve, taupe, slate gray, ash gray,
pearl white, champagne, neon green, neon pink""")
MATERIALS = words("""wooden, oak, pine, walnut, bamboo, metal, steel, stainless steel, iron, cast iron,
copper, brass, aluminum, gold, silver, glass, stained glass, crystal, ceramic, porcelain, clay, terracotta,
stone, marble, granite, concrete, brick, plastic, rubber, leather, suede, cotton, linen, wool, knitted, silk,
velvet, satin, denim, lace, felt, paper, cardboard, wicker, rattan, straw, cork, wax, ice, crochet, faux fur,
corduroy, tweed, sequined, beaded, embroidered, enamel, pewter, jade, obsidian, sandstone, slate, driftwood,
mahogany, cherry wood, teak, plywood, acrylic, resin, fiberglass, chrome, carbon fiber, patchwork, canvas,
burlap, mesh, lacquered, gilded, hand-blown glass, recycled plastic, reclaimed wood""")
FABRICS = words("""cotton, linen, wool, knitted, silk, velvet, satin, denim, lace, felt, leather, suede,
corduroy, tweed, sequined, beaded, embroidered, faux fur, crochet, fleece, cashmere, chiffon, tulle, nylon,
polyester, waterproof, quilted, ribbed, organic cotton, merino wool, flannel, jersey, mohair,
vegan leather""")
TEXTURES = words("""smooth, rough, glossy, matte, shiny, polished, weathered, worn, cracked, rusty, dusty,
muddy, wet, dry, fuzzy, fluffy, furry, soft, hard, bumpy, grainy, wrinkled, crumpled, torn, faded, chipped,
scratched, spotted, speckled, translucent, transparent, iridescent, metallic, sparkly, glittery, frosted,
mossy, overgrown, textured, patterned, ornate, intricate, carved, hand-painted, handmade, woven, quilted,
pleated, ribbed, velvety, silky, sticky, slimy, scaly, feathery, prickly, spiky, dented, peeling, tarnished,
gleaming, dull, pitted, knotted, frayed, stained, sun-bleached""")
SIZE_AGE = words("""tiny, small, little, large, big, huge, giant, enormous, massive, miniature, tall, short,
long, wide, narrow, thick, thin, old, new, ancient, vintage, antique, modern, futuristic, retro, classic,
brand-new, old-fashioned, medieval, victorian, clean, dirty, broken, empty, full, open, closed, folded, round,
square, rectangular, oval, triangular, circular, spherical, hexagonal, curved, pointed, heavy, lightweight,
delicate, fragile, sturdy, cheap, expensive, fancy, plain, simple, elegant, rustic, luxurious, shabby,
charming, quaint, beautiful, pretty, lovely, ugly, strange, unusual, mysterious, magical, glowing, floating,
upside-down, half-empty, overflowing, lopsided, oversized, tiny little, handcrafted, mass-produced, well-used,
forgotten, lost, abandoned, discarded, cherished""")
SCENE_ADJ = words("""busy, crowded, quiet, peaceful, cozy, spacious, bright, dark, dim, colorful, lively,
deserted, empty, cluttered, beautiful, gorgeous, stunning, majestic, magnificent, mysterious, eerie, spooky,
creepy, whimsical, magical, surreal, dreamy, serene, tranquil, calm, dramatic, epic, idyllic, picturesque,
scenic, lush, green, barren, remote, secluded, hidden, famous, historic, traditional, exotic, tropical,
arctic, frozen, snowy, sunny, rainy, foggy, misty, windy, stormy, sunlit, moonlit, candlelit, neon-lit,
flooded, towering, sprawling, winding, steep, rugged, wild, untouched, vast, endless, narrow, charming,
sleepy, bustling, gloomy, desolate, enchanted, haunted, ruined, overgrown, pristine, lonely, golden, silent,
vibrant, hazy, smoky, dusty, icy, muddy, rocky, sandy, grassy""")
EMOTIONS = words("""joy, happiness, sadness, grief, anger, fear, surprise, love, hope, nostalgia, loneliness,
serenity, excitement, awe, wonder, melancholy, peace, anxiety, calm, delight, boredom, pride, shame,
curiosity, gratitude, triumph, despair, longing, contentment, jealousy, relief, confusion, tenderness,
determination, exhaustion, euphoria, regret, solitude, freedom, innocence, mystery, chaos, harmony""")
EMOTION_ADJ = words("""happy, sad, angry, scared, surprised, excited, bored, nervous, calm, confused, proud,
embarrassed, disappointed, hopeful, lonely, relieved, frustrated, delighted, amazed, shocked, heartbroken,
content, peaceful, anxious, thoughtful, melancholic, joyful, furious, terrified, ecstatic, grateful,
nostalgic, determined, exhausted, confident, shy, playful, mischievous, serene, dreamy""")
ADVERBS = words("""slowly, quickly, happily, quietly, gracefully, carefully, calmly, lazily, proudly,
nervously, eagerly, gently, playfully, peacefully, joyfully, silently, patiently, cheerfully, confidently,
awkwardly, energetically, thoughtfully, anxiously, hurriedly, casually, elegantly, sadly, wearily, intently,
dramatically""")

# --- light, weather, time, camera, art ------------------------------------------------------------------
LIGHTING = words("""soft morning light, golden hour light, harsh midday sun, warm candlelight, neon lights,
moonlight, backlight, rim light, dappled sunlight, overcast light, dramatic shadows, studio lighting,
natural light, fluorescent light, firelight, lantern light, twilight glow, sunbeams, god rays, spotlight,
stage lights, string lights, fairy lights, street lights, lamplight, soft window light, cinematic lighting,
volumetric lighting, ambient light, warm light, cold blue light, diffused light, hard light, low key lighting,
high key lighting, chiaroscuro, bioluminescent glow, sunset glow, light leaks, colorful reflections,
ring light, softbox lighting, rembrandt lighting, side lighting, candle glow, flickering torchlight,
northern lights, city lights, headlights, car lights, glow sticks""")
WEATHER_ADJ = words("""sunny, cloudy, overcast, rainy, stormy, foggy, misty, snowy, windy, hazy, drizzly,
frosty, humid, icy, clear, gray, bright, chilly, cold, hot, warm, wet, gloomy, breezy, freezing""")
FALLING = words("""rain, snow, hail, sleet, drizzle, snowflakes, autumn leaves, cherry blossom petals, ash,
raindrops, confetti, meteors, golden leaves, feathers, stars""")
WEATHER_NOUN = words("""rain, snow, fog, mist, storm, thunderstorm, lightning, hail, drizzle, blizzard,
rainbow, clouds, storm clouds, heat haze, sleet, sandstorm, snowfall, downpour, wind, frost, morning dew,
double rainbow, dark clouds, fluffy clouds, tornado""")
TIMES = words("""at dawn, at sunrise, in the morning, early in the morning, at noon, in the afternoon,
late in the afternoon, at sunset, at dusk, at twilight, in the evening, at night, at midnight,
during the blue hour, during golden hour, under a full moon, under a starry sky, in spring, in summer,
in autumn, in the fall, in winter, on a rainy day, on a snowy evening, on a foggy morning,
on a summer afternoon, on a winter night, on a hot day, on a cold morning, after the rain, before the storm,
during a thunderstorm, in the snow, in the rain, in the fog""")
SKY_EVENTS = words("""sunset, sunrise, dawn, dusk, twilight, moonrise, a full moon, a crescent moon,
the milky way, a starry sky, the northern lights, a thunderstorm, a rainbow, storm clouds, a lightning storm,
a meteor shower, a solar eclipse, fireworks, a hot air balloon festival, fog""")
SHOTS = words("""close-up, extreme close-up, macro shot, wide shot, wide-angle shot, aerial view, drone shot,
bird's eye view, top-down view, low angle shot, high angle shot, eye-level shot, overhead shot, side view,
front view, rear view, three-quarter view, portrait, headshot, full-body shot, medium shot, long shot,
panoramic view, fisheye shot, candid shot, selfie, silhouette, close-up photo, detail shot, establishing shot,
over-the-shoulder shot, point-of-view shot, dutch angle shot, cross-section view, isometric view,
cutaway view""")
CAMERA_TAGS = words("""35mm, 50mm, 85mm, 24mm, 200mm, f/1.4, f/1.8, f/2.8, f/8, iso 100, iso 3200, bokeh,
shallow depth of field, deep focus, motion blur, long exposure, tilt-shift, double exposure, fisheye lens,
telephoto lens, wide-angle lens, macro lens, dslr, mirrorless camera, film photo, 35mm film, medium format,
kodak portra 400, kodak gold, fujifilm, ilford hp5, polaroid, disposable camera, lens flare, vignette,
film grain, overexposed, underexposed, hdr, high shutter speed, sharp focus, soft focus, raw photo, candid,
documentary photo, street photography, analog photo, cinestill 800t, canon eos, nikon, leica, hasselblad,
sony a7, shot on iphone, gopro footage, cctv footage, infrared photo, black and white photo, sepia tone,
cross-processed, high contrast, low contrast""")
QUALITY_TAGS = words("""highly detailed, intricate details, sharp focus, 8k, 4k, ultra realistic, masterpiece,
best quality, award-winning photo, trending on artstation, octane render, unreal engine, volumetric lighting,
cinematic lighting, depth of field, hdr, studio lighting, soft lighting, concept art, digital art,
illustration, smooth, elegant, dramatic, epic composition, wide angle, matte painting, vivid colors,
pastel colors, muted colors, high contrast, film grain, hyperdetailed, photorealistic, ray tracing,
subsurface scattering, rule of thirds, symmetrical, centered, full body, close up, ultra wide, cinematic,
moody, atmospheric, ethereal, dreamlike, whimsical, beautiful, stunning, gorgeous, professional photo,
editorial photo, national geographic, vogue cover, album cover, book cover, movie still, film still,
character design, concept sheet, game asset, isometric, low poly, cel shaded, detailed background,
bokeh background, soft colors, warm tones, cool tones, golden tones, color graded, trending on pinterest,
featured on behance, 3d, clean lines, sharp lines, dynamic pose, action shot, high resolution, ultra hd,
crisp, soft glow, glowing, iridescent, holographic, made in blender""")
MEDIA = words("""an oil painting of, a watercolor painting of, a watercolor of, an acrylic painting of,
a pencil sketch of, a charcoal drawing of, an ink drawing of, a pastel drawing of, a digital painting of,
a digital illustration of, a 3d render of, a low poly model of, pixel art of, a mosaic of,
a stained glass window depicting, a woodcut print of, a linocut of, an engraving of, a photograph of,
a photo of, a black and white photo of, a polaroid of, a vintage photo of, an anime drawing of,
a manga panel of, a comic book illustration of, a cartoon of, a children's book illustration of,
a claymation figure of, a papercraft model of, an origami model of, a collage of, a fresco of, a tapestry of,
a marble statue of, a bronze sculpture of, a vector illustration of, a flat icon of, a logo of, a sticker of,
a tattoo design of, a blueprint of, concept art of, a matte painting of, an ukiyo-e print of,
a graffiti mural of, an embroidery of, a sand sculpture of, an ice sculpture of, a lego model of,
a neon sign of, a chalk drawing of, a gouache painting of, a crayon drawing of, a screen print of,
a risograph print of, a cross-stitch of, a felt figure of, a plush toy of, a wood carving of,
a ceramic figurine of, a botanical illustration of, a technical drawing of, a storybook illustration of,
a propaganda poster of, a travel poster of, a movie poster of, an album cover with, a postage stamp with,
a coloring book page of, a doodle of, an etching of, a sumi-e painting of, a miniature painting of,
an isometric illustration of, a voxel model of, a cel-shaded render of, a sculpture of, a diorama of,
a tilt-shift photo of, a film still of""")
STYLES = words("""impressionist, expressionist, cubist, surrealist, art nouveau, art deco, baroque,
renaissance, pop art, minimalist, abstract, photorealistic, hyperrealistic, cyberpunk, steampunk, vaporwave,
synthwave, gothic, fantasy, sci-fi, retro, vintage, noir, film noir, ukiyo-e, bauhaus, rococo, romanticism,
pointillism, fauvism, dadaism, constructivist, futurism, brutalist, solarpunk, dieselpunk, biopunk,
afrofuturist, lo-fi, y2k, kawaii, chibi, anime, manga, cartoon, comic book, storybook, folk art, naive art,
tribal, psychedelic, op art, street art, graffiti, ink wash, sumi-e, watercolor, oil on canvas, gouache,
pastel, charcoal, line art, flat design, isometric, low poly, voxel, pixel art, 8-bit, 16-bit, claymation,
stop motion, papercut, collage, art brut, dark fantasy, high fantasy, cosmic horror, fairytale, whimsical,
cottagecore, dark academia, grunge, punk, neoclassical, pre-raphaelite, academic art, hudson river school,
tonalism, luminism, precisionism, mughal miniature""")
ARTISTS = words("""Vincent van Gogh, Claude Monet, Rembrandt, Johannes Vermeer, Leonardo da Vinci, Hokusai,
Gustav Klimt, Pablo Picasso, Salvador Dali, Frida Kahlo, Edward Hopper, J. M. W. Turner, Caravaggio,
Alphonse Mucha, Sandro Botticelli, Michelangelo, Andy Warhol, Henri Matisse, Paul Cezanne, Paul Gauguin,
Pierre-Auguste Renoir, Edgar Degas, Edvard Munch, Rene Magritte, Wassily Kandinsky, M. C. Escher,
Norman Rockwell, John James Audubon, Beatrix Potter, Hieronymus Bosch, Pieter Bruegel, Albrecht Durer,
Georges Seurat, Joan Miro, Piet Mondrian, Mark Rothko, Jackson Pollock, Georgia O'Keeffe, Egon Schiele,
Amedeo Modigliani, Caspar David Friedrich, John Singer Sargent, Winslow Homer, Ivan Aivazovsky,
Utagawa Hiroshige, Katsushika Hokusai, William Morris, Aubrey Beardsley, Arthur Rackham, Gustave Dore,
Mary Cassatt, Berthe Morisot, Camille Pissarro, Diego Rivera, Tamara de Lempicka, Henri Rousseau,
Marc Chagall, Paul Klee, Kazimir Malevich, Francisco Goya, Diego Velazquez, El Greco, Titian, Raphael,
Jan van Eyck, Thomas Cole, Albert Bierstadt, Ansel Adams, Dorothea Lange, Ivan Shishkin""")
PLATFORMS = words("artstation, behance, pinterest, deviantart, dribbble, cgsociety, pixiv, flickr, unsplash")

# --- relations, counts, verbs ------------------------------------------------------------------------------
RELATIONS = words("""on, on top of, under, underneath, beneath, next to, beside, near, behind, in front of,
to the left of, to the right of, on the left of, on the right of, above, below, inside, in, outside, around,
across from, against, leaning against, hanging above, resting on, stacked on, balanced on, floating above,
lying on, on the edge of, in the corner of, at the bottom of, at the top of, by, close to, far from, opposite,
alongside, among, tucked behind, hidden under, propped against, perched on top of, placed beside,
sitting next to""")
SURFACES = words("""wooden table, kitchen table, desk, wooden desk, kitchen counter, marble countertop,
windowsill, shelf, bookshelf, floor, wooden floor, tiled floor, carpet, rug, bed, unmade bed, sofa, armchair,
park bench, picnic table, tablecloth, tray, stone wall, brick wall, grass, lawn, sand, snow, gravel path,
doorstep, stool, crate, cardboard box, stack of books, piano, dashboard, car seat, bedside table,
coffee table, garden table, cafe table, restaurant table, workbench, chopping block, white background,
black background, pink background, blue background, gray background, pastel background, linen tablecloth,
checkered tablecloth, mossy rock, tree stump, beach towel, concrete floor""")
COVERINGS = words("dust, sand, snow, frost, mist, morning dew, mud, ash, glitter, confetti, cobwebs, soot")
MASS_SURFACES = words("grass, sand, snow, moss, gravel, carpet, hay, ice, mud, dirt, pavement, asphalt")
WATER_PLACES = words("""in the ocean, in the deep sea, near a coral reef, in an aquarium, in a tank,
in the open sea, in a kelp forest, in a lagoon, in clear blue water, under the waves, in a pond, in a river,
in shallow water, near the shore, in a rock pool, under the ice, in murky water, in the arctic sea,
in tropical waters""")
NUMBERS = words("two, three, four, five, six, seven, eight, nine, ten, eleven, twelve, twenty")
QUANTIFIERS = words("""a few, several, many, a couple of, a dozen, a pair of, a row of, a pile of, a stack of,
a bunch of, lots of, dozens of, hundreds of, a handful of, a collection of, a set of, a line of, a cluster of,
a heap of, an assortment of""")
PEOPLE_QUANTIFIERS = words("""a few, several, many, a couple of, a group of, a line of, a crowd of, a team of,
a circle of, a pair of, a family of, a class of, a band of, lots of, dozens of, hundreds of""")
INTRANSITIVE = words("""stand, sit, walk, run, jog, dance, sing, laugh, smile, cry, sleep, nap, wait, rest,
relax, pose, meditate, stretch, jump, climb, swim, surf, ski, skate, hike, kneel, lean, talk, pray, work,
study, shop, cook, read, write, paint, wave, shout, yawn, daydream, exercise, celebrate, hide, dive, fish,
garden, camp, sunbathe, picnic, whistle, wander, stroll, march, skip, hop, sprint, crouch, sneeze, cheer,
clap, bow, squat, float, fall, slide, spin, twirl, perform, practice, argue, chat, gossip, whisper, giggle,
frown, sigh, shiver, sweat, blush, think, listen, watch, point, search, explore, travel, commute, protest,
vote, volunteer, teach, preach, lecture, compete, train, warm up, cool down, look up, look down, look away,
look around, sit down, stand up, lie down, wake up, get dressed, play, rehearse, bake, sketch, sew, knit, fly,
queue, recline, lounge""")
VERB_OBJECTS: list[tuple[list[str], str]] = [
    (words("""hold, carry, pick up, look at, point at, clean, fix, examine, photograph, draw, paint, sell,
buy, inspect, drop, wrap, unwrap, open, find, balance, polish, decorate, admire, grab, hug, juggle, toss,
lift, drag, repair, sniff, shake, squeeze, wave, swing, hide, steal, return, borrow, hand over, put down,
clutch, cradle"""), "handheld"),
    (words("""eat, share, cook, slice, serve, prepare, taste, bite into, cut, chop, peel, wash, bake, grill,
fry, arrange, order, devour, nibble on, sample, garnish, plate up"""), "food"),
    (words("drink, sip, pour, order, make, stir, hold, carry, spill, gulp down, enjoy, brew"), "drink"),
    (words("ride"), "rideable"),
    (words("drive, park, wash, repair, push, pull, paint, tow, fix, load, unload, polish"), "vehicle"),
    (words("play, tune, practice, carry, strum, clean, repair"), "instrument"),
    (words("read, write in, flip through, browse, study, sign, fold, tear, burn, hide"), "readable"),
    (words("""pet, feed, walk, brush, hug, chase, train, photograph, watch, bathe, carry, cuddle, kiss, groom,
follow, rescue, draw, sketch, paint, film"""), "pet"),
    (words("throw, catch, kick, hit, bounce, dribble, juggle, spin, chase, toss"), "ball"),
    (words("plant, water, pick, smell, arrange, trim, prune, paint, photograph, hold"), "plant"),
]
READABLES = words("""book, newspaper, magazine, map, letter, postcard, menu, recipe book, comic book, novel,
textbook, notebook, diary, journal, cookbook, guidebook, storybook, picture book, scroll, manuscript, poster,
brochure, contract, report, e-reader, tablet, phone, paperback, hardcover book, atlas""")
RIDEABLE = words("""horse, pony, camel, elephant, donkey, bicycle, bike, motorcycle, scooter, skateboard,
surfboard, snowboard, unicycle, tricycle, roller coaster, carousel horse, dirt bike, mountain bike, jet ski,
mechanical bull, tandem bicycle, electric scooter, zipline, sled, wave, mule, ostrich, dragon""")
BALLS = words("""ball, football, basketball, soccer ball, volleyball, tennis ball, baseball, beach ball,
frisbee, rugby ball, golf ball, bowling ball, dodgeball, ping pong ball, shuttlecock, hacky sack""")
IRREGULAR_ING = {"lie": "lying", "tie": "tying", "die": "dying", "see": "seeing", "ski": "skiing",
                 "picnic": "picnicking", "be": "being", "queue": "queuing"}
DOUBLING = set(words("""run, sit, swim, stop, dig, shop, hug, jog, clap, chop, cut, hit, skip, drum, grab,
nap, get, set, put, pat, rub, scrub, spin, trim, wrap, drop, begin, knit, plug, sip, slip, stir, tap, win,
beg, hop, mop, pet, plan, drag, unwrap, squat, snap, step, strum, swap, tip, trot, zip, nod, chat, pop, bob,
sob, fan, jam, pin, shrug, flip, drip, wag, tug, sled, sun, dip, rip, tan, chip, grin, hum, jot, kid, slam,
spot, stab, swat"""))
IRREGULAR_THIRD = {"have": "has", "do": "does", "go": "goes"}
IRREGULAR_PLURAL = {
    "child": "children", "person": "people", "mouse": "mice", "goose": "geese", "foot": "feet",
    "tooth": "teeth", "ox": "oxen", "cactus": "cacti", "fungus": "fungi", "potato": "potatoes",
    "tomato": "tomatoes", "mango": "mangoes", "volcano": "volcanoes", "hero": "heroes",
    "buffalo": "buffaloes", "tornado": "tornadoes", "mosquito": "mosquitoes",
}
# Matched as word endings, so 'headscarf' -> 'headscarves' and 'werewolf' -> 'werewolves'.
F_PLURALS = {"scarf": "scarves", "shelf": "shelves", "knife": "knives", "leaf": "leaves", "loaf": "loaves",
             "wolf": "wolves", "calf": "calves", "elf": "elves", "thief": "thieves", "half": "halves",
             "hoof": "hooves", "wife": "wives", "dwarf": "dwarves"}
SAME_PLURAL = set(words("""sheep, deer, fish, moose, bison, salmon, trout, shrimp, squid, koi, aircraft, tuna,
reindeer, elk, triceratops"""))
NOT_MEN = {"human", "shaman", "german", "talisman", "caiman", "ottoman", "doberman", "walkman"}
CONSONANT_SOUND_VOWELS = ("uni", "use", "usu", "uti", "uk", "eu", "one", "once", "ewe", "ufo")
VOWEL_SOUND_CONSONANTS = ("hour", "honest", "honor", "heir", "8", "18", "11", "mri", "x-ray", "fbi")


# --- grammar -------------------------------------------------------------------------------------------
def article(phrase: str) -> str:
    """`phrase` with the right indefinite article, e.g. 'an old house', 'a unicorn', 'an hour'."""
    low = phrase.lower()
    vowel = low[0] in "aeiou" and not low.startswith(CONSONANT_SOUND_VOWELS)
    an = vowel or low.startswith(VOWEL_SOUND_CONSONANTS)
    return ("an " if an else "a ") + phrase


def plural(noun: str) -> str:
    """Plural of a (multi-word) noun: 'loaf of bread' -> 'loaves of bread', 'fire truck' -> 'fire trucks'."""
    if " of " in noun:
        head, tail = noun.split(" of ", 1)
        return f"{plural(head)} of {tail}"
    *front, last = noun.split(" ")
    f_ending = next((e for e in F_PLURALS if last.endswith(e)), None)
    if last in IRREGULAR_PLURAL:
        last = IRREGULAR_PLURAL[last]
    elif f_ending:
        last = last[: -len(f_ending)] + F_PLURALS[f_ending]
    elif last in SAME_PLURAL or last.endswith(("fish", "sheep", "deer")):
        pass
    elif last.endswith("man") and last not in NOT_MEN:
        last = last[:-3] + "men"
    elif last.endswith(("s", "sh", "ch", "x", "z")):
        last += "es"
    elif last.endswith("y") and last[-2:-1] not in ("a", "e", "i", "o", "u"):
        last = last[:-1] + "ies"
    else:
        last += "s"
    return " ".join([*front, last])


def ing(verb: str) -> str:
    """Present participle of the first word of a (phrasal) verb: 'pick up' -> 'picking up'."""
    first, _, rest = verb.partition(" ")
    if first in IRREGULAR_ING:
        first = IRREGULAR_ING[first]
    elif first in DOUBLING:
        first += first[-1] + "ing"
    elif first.endswith("ie"):
        first = first[:-2] + "ying"
    elif first.endswith("e") and not first.endswith(("ee", "ye", "oe")):
        first = first[:-1] + "ing"
    else:
        first += "ing"
    return f"{first} {rest}".strip()


def third(verb: str) -> str:
    """Third person singular of the first word of a (phrasal) verb: 'carry' -> 'carries'."""
    first, _, rest = verb.partition(" ")
    if first in IRREGULAR_THIRD:
        first = IRREGULAR_THIRD[first]
    elif first.endswith(("s", "sh", "ch", "x", "z", "o")):
        first += "es"
    elif first.endswith("y") and first[-2:-1] not in ("a", "e", "i", "o", "u"):
        first = first[:-1] + "ies"
    else:
        first += "s"
    return f"{first} {rest}".strip()


def cap(text: str) -> str:
    """`text` with its first letter upper case (unlike str.capitalize, the rest is left alone)."""
    return text[:1].upper() + text[1:]


def join_and(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# --- captions -------------------------------------------------------------------------------------------
class Captioner:
    """Random captions from the word lists; every choice goes through one seeded `random.Random`."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def pick(self, seq: Sequence[str]) -> str:
        return self.rng.choice(seq)

    def maybe(self, p: float) -> bool:
        return self.rng.random() < p

    def opt(self, p: float, seq: Sequence[str], sep: str = " ") -> str:
        """A random item followed by `sep` with probability p, else ''."""
        return self.pick(seq) + sep if self.maybe(p) else ""

    # noun phrases
    def count(self, noun: str, quantifiers: Sequence[str] = QUANTIFIERS) -> str:
        """'three apples', 'a stack of books': a plural of the singular `noun` with a number or quantifier."""
        if self.maybe(0.6):
            return f"{self.pick(NUMBERS)} {plural(noun)}"
        return f"{self.pick(quantifiers)} {plural(noun)}"

    def person(self, plural_p: float = 0.25) -> tuple[str, bool]:
        """A person or people, e.g. 'a smiling young nurse in a red coat', and whether it is plural."""
        head = self.pick(PEOPLE) if self.maybe(0.45) else self.pick(JOBS)
        adj = self.opt(0.3, PERSON_MOODS) + (self.opt(0.3, JOB_AGES) if head in JOBS else "")
        many = self.maybe(plural_p) and head not in ("couple", "family")
        phrase = self.count(adj + head, PEOPLE_QUANTIFIERS) if many else article(adj + head)
        if self.maybe(0.3):
            phrase += " " + self.clothing(many)
        elif self.maybe(0.12):
            phrase += f" with {self.pick(HAIR_LENGTH)} {self.pick(HAIR_COLOR)} hair"
        elif self.maybe(0.08):
            phrase += f" with {self.pick(FEATURES)}"
        return phrase, many

    def clothing(self, many: bool = False) -> str:
        verb, color = self.pick(["in", "wearing"]), self.opt(0.7, COLORS)
        if self.maybe(0.3):
            return f"{verb} {color}{self.pick(PLURAL_WEAR)}"
        garment = color + self.opt(0.25, FABRICS) + self.pick(GARMENTS)
        extra = f" and {self.pick(PLURAL_WEAR)}" if self.maybe(0.2) else ""
        return f"{verb} {plural(garment) if many else article(garment)}{extra}"

    def animal(self, plural_p: float = 0.2, pool: Sequence[str] = ANIMALS) -> tuple[str, bool, str]:
        """An animal phrase, whether it is plural, and the animal itself."""
        head = self.pick(pool)
        colorful = head not in CREATURES and head not in SEA_ANIMALS
        adj = self.opt(0.35, ANIMAL_ADJ) + (self.opt(0.3, ANIMAL_COLORS) if colorful else "")
        if self.maybe(plural_p):
            groups = [g for g, members in ANIMAL_GROUPS.items() if head in members]
            if groups and self.maybe(0.5):
                return f"{article(self.pick(groups))} of {adj}{plural(head)}", True, head
            return self.count(adj + head), True, head
        return article(adj + head), False, head

    def animal_action(self, head: str, many: bool) -> str:
        if head in BIRDS:
            pool = BIRD_ACTIONS
        elif head in SEA_ANIMALS:
            pool = SEA_ACTIONS
        elif head in SMALL_CREATURES:
            pool = SMALL_ACTIONS
        elif head in CREATURES:
            pool = CREATURE_ACTIONS + LAND_ACTIONS
        else:
            pool = LAND_ACTIONS
        return self.pick(pool).replace("{its}", "their" if many else "its")

    def thing(self, pool: Sequence[str] = HANDHELD, plural_p: float = 0.15) -> str:
        """'a small red ceramic mug', 'three old books', 'an umbrella'."""
        adj = (self.opt(0.3, SIZE_AGE) + self.opt(0.2, TEXTURES) + self.opt(0.35, COLORS)
               + self.opt(0.25, MATERIALS))
        noun = adj + self.pick(pool)
        return self.count(noun) if self.maybe(plural_p) else article(noun)

    def surface(self, adj: str = "") -> str:
        """'a wooden table', 'the grass'."""
        if self.maybe(0.12):
            return f"the {adj}{self.pick(MASS_SURFACES)}"
        return article(adj + self.pick(SURFACES))

    def food(self) -> str:
        """'a glazed donut', 'three ripe mangoes', 'a bowl of ramen', 'a cup of coffee'."""
        roll = self.rng.random()
        adj = self.opt(0.45, FOOD_ADJ)
        if roll < 0.35:
            return article(adj + self.pick(DISHES_COUNT))
        if roll < 0.55:
            return self.count(adj + self.pick(FRUIT_VEG + DISHES_COUNT))
        if roll < 0.75:
            return f"{article(self.pick(SERVING))} of {adj}{self.pick(DISHES_MASS)}"
        if roll < 0.9:
            return f"{article(self.pick(DRINK_VESSELS))} of {self.pick(DRINKS)}"
        return adj + self.pick(DISHES_MASS)

    def place(self) -> str:
        """A prepositional place phrase: 'in a cozy kitchen', 'on the beach', 'at the airport', 'in Paris'."""
        roll = self.rng.random()
        adj = self.opt(0.3, SCENE_ADJ)
        if roll < 0.12:
            return f"in {self.pick(CITIES + REGIONS)}"
        prep = "in" if roll < 0.55 else "on" if roll < 0.82 else "at"
        noun = self.pick({"in": IN_PLACES, "on": ON_PLACES, "at": AT_PLACES}[prep])
        definite = self.maybe(0.5) or " of " in noun or "'" in noun  # 'the edge of a cliff'
        det = f"the {adj}{noun}" if definite else article(adj + noun)
        tail = f" in {self.pick(CITIES + REGIONS)}" if self.maybe(0.1) else ""
        return f"{prep} {det}{tail}"

    def setting(self) -> str:
        """A place, optionally with a time of day or weather."""
        out = self.place()
        if self.maybe(0.25):
            out += " " + self.pick(TIMES)
        return out

    def landscape(self) -> str:
        adj = self.opt(0.5, SCENE_ADJ)
        if self.maybe(0.1):
            return f"{self.pick(['', 'the '])}{adj}{self.pick(LANDSCAPES_PLURAL)}"
        return article(adj + self.pick(LANDSCAPES))

    def building(self) -> str:
        return article(self.opt(0.5, SCENE_ADJ + SIZE_AGE) + self.opt(0.2, COLORS) + self.pick(BUILDINGS))

    def vehicle(self) -> tuple[str, str]:
        """A vehicle phrase and what it is doing."""
        kind = self.rng.random()
        adj = self.opt(0.55, VEHICLE_ADJ)
        if kind < 0.5:
            noun, doing = self.pick(VEHICLES_LAND), self.pick(LAND_DOING)
        elif kind < 0.65:
            noun, doing = self.pick(VEHICLES_CYCLE), self.pick(CYCLE_DOING)
        elif kind < 0.85:
            noun, doing = self.pick(VEHICLES_WATER), self.pick(WATER_DOING)
        else:
            noun, doing = self.pick(VEHICLES_AIR), self.pick(AIR_DOING)
        return article(adj + noun), doing

    def action(self) -> tuple[str, str]:
        """(verb, rest): a verb in base form and what follows it, e.g. ('ride', 'a brown horse')."""
        if self.maybe(0.35):
            return self.pick(INTRANSITIVE), self.opt(0.25, ADVERBS, "").strip()
        verbs, kind = self.rng.choice(VERB_OBJECTS)
        verb = self.pick(verbs)
        if kind == "handheld":
            obj = self.thing()
        elif kind == "food":
            obj = self.food()
        elif kind == "drink":
            obj = f"{article(self.pick(DRINK_VESSELS))} of {self.pick(DRINKS)}"
        elif kind == "rideable":
            obj = article(self.opt(0.4, VEHICLE_ADJ) + self.pick(RIDEABLE))
        elif kind == "vehicle":
            obj = self.vehicle()[0]
        elif kind == "instrument":
            obj = f"the {self.pick(INSTRUMENTS)}"
        elif kind == "readable":
            obj = article(self.opt(0.3, SIZE_AGE) + self.pick(READABLES))
        elif kind == "pet":
            obj = self.animal(0.15, PETS + FARM_ANIMALS + ["dragon", "unicorn", "robot", "dinosaur"])[0]
        elif kind == "ball":
            obj = article(self.opt(0.3, COLORS) + self.pick(BALLS))
        else:
            obj = self.count(self.pick(FLOWERS)) if self.maybe(0.5) else article(self.pick(PLANTS))
        return verb, obj

    def doing(self, many: bool, finite: bool = False) -> str:
        verb, rest = self.action()
        form = ing(verb) if not finite else verb if many else third(verb)
        return f"{form} {rest}".strip()

    def subject(self) -> str:
        """Any noun phrase a picture can be of."""
        roll = self.rng.random()
        if roll < 0.3:
            return self.person()[0]
        if roll < 0.55:
            return self.animal()[0]
        if roll < 0.67:
            return self.thing(HANDHELD + FURNITURE + STREET_THINGS)
        if roll < 0.75:
            return self.landscape()
        if roll < 0.83:
            return self.building()
        if roll < 0.9:
            return self.vehicle()[0]
        if roll < 0.95:
            return self.food()
        return article(self.opt(0.5, COLORS) + self.pick(FLOWERS + PLANTS))

    def scene(self) -> str:
        """A subject doing something somewhere: the core of most sentence captions."""
        roll = self.rng.random()
        if roll < 0.4:
            who, many = self.person()
            return f"{who} {self.doing(many, finite=self.maybe(0.25))} {self.setting()}"
        if roll < 0.7:
            what, many, head = self.animal()
            where = self.pick(WATER_PLACES) if head in SEA_ANIMALS else self.place()
            return f"{what} {self.animal_action(head, many)} {where}"
        if roll < 0.85:
            what, doing = self.vehicle()
            return f"{what} {doing}"
        first, second = self.thing(HANDHELD + FURNITURE), self.thing(FURNITURE + HANDHELD, 0.1)
        return f"{first} {self.pick(RELATIONS)} {second}"

    def tags(self, lo: int, hi: int) -> list[str]:
        pools = [QUALITY_TAGS, QUALITY_TAGS, CAMERA_TAGS, LIGHTING, STYLES]
        out = [self.pick(self.rng.choice(pools)) for _ in range(self.rng.randint(lo, hi))]
        if self.maybe(0.2):
            out.append(f"{self.pick(['by', 'in the style of', 'inspired by'])} {self.pick(ARTISTS)}")
        if self.maybe(0.1):
            out.append(f"trending on {self.pick(PLATFORMS)}")
        if self.maybe(0.1):
            out.append(f"{self.pick(COLORS)} and {self.pick(COLORS)} color palette")
        return list(dict.fromkeys(out))

    # templates: each makes one kind of caption -------------------------------------------------------
    def t_person_finite(self) -> str:
        who, many = self.person(0.35)
        return f"{who} {self.doing(many, finite=True)} {self.setting()}"

    def t_still_life(self) -> str:
        first = self.thing(HANDHELD + FURNITURE)
        second = self.thing(HANDHELD, 0.2)
        return f"{first} {self.pick(RELATIONS)} {second} on {self.surface()}"

    def t_count(self) -> str:
        things = [self.count(self.pick(HANDHELD + FRUIT_VEG)) for _ in range(self.rng.randint(1, 2))]
        if self.maybe(0.4):
            things.append(self.thing())
        return f"{join_and(things)} on {self.surface(self.opt(0.3, SIZE_AGE + TEXTURES))}"

    def t_food(self) -> str:
        roll = self.rng.random()
        if roll < 0.3:
            sides = join_and([self.pick(DISHES_MASS) for _ in range(self.rng.randint(1, 3))])
            main = f"{article(self.pick(SERVING))} of {self.opt(0.5, FOOD_ADJ)}{self.pick(DISHES_MASS)}"
            return f"{main} with {sides}"
        if roll < 0.55:
            on = article(self.opt(0.5, COLORS) + self.pick(SERVE_ON)) if self.maybe(0.6) else self.surface()
            return f"{self.food()} on {on}"
        if roll < 0.75:
            return f"{self.food()} and {self.food()} {self.place()}"
        if roll < 0.9:
            tags = ", ".join(self.rng.sample(FOOD_TAGS, 3))
            return f"{self.food()}, {tags}"
        kind = self.pick(["homemade", "traditional", "easy", "healthy", "classic", "quick"])
        return f"{kind} {self.pick(DISHES_MASS + DISHES_COUNT)} recipe"

    def t_landscape(self) -> str:
        roll = self.rng.random()
        region = f" in {self.pick(REGIONS)}" if self.maybe(0.4) else ""
        if roll < 0.3:
            return f"{self.landscape()} {self.pick(TIMES)}{region}"
        if roll < 0.5:
            return f"{self.pick(SKY_EVENTS)} over {self.landscape()}{region}"
        if roll < 0.7:
            feature = self.pick(LANDSCAPES + BUILDINGS)
            return f"{self.landscape()} with {article(self.opt(0.4, SCENE_ADJ) + feature)}{region}"
        if roll < 0.85:
            return f"{self.pick(WEATHER_NOUN)} over {self.landscape()}{region}"
        view = self.pick(["view of", "panorama of", "looking out over", "path through"])
        return f"{view} {self.landscape()}{region}, {self.pick(TIMES)}"

    def t_building(self) -> str:
        roll = self.rng.random()
        if roll < 0.3:
            return f"{self.building()} in {self.pick(CITIES + REGIONS)}"
        if roll < 0.45:
            return f"the {self.pick(CITIES)} skyline {self.pick(TIMES)}"
        if roll < 0.7:
            style = self.pick(ROOM_STYLES)
            items = join_and([self.thing(FURNITURE, 0.1) for _ in range(self.rng.randint(1, 3))])
            return f"the interior of {article(style + ' ' + self.pick(ROOMS))} with {items}"
        if roll < 0.85:
            return f"{article(self.pick(ROOM_STYLES) + ' ' + self.pick(ROOMS))}, {self.pick(LIGHTING)}"
        return f"a {self.pick(SCENE_ADJ)} street in {self.pick(CITIES)} with {plural(self.pick(BUILDINGS))}"

    def t_art(self) -> str:
        out = f"{self.pick(MEDIA)} {self.subject()}"
        if self.maybe(0.3):
            out += " " + self.place()
        if self.maybe(0.4):
            out += f", {self.pick(STYLES)}"
        if self.maybe(0.2):
            out += f", in the style of {self.pick(ARTISTS)}"
        return out

    def t_prompt(self) -> str:
        roll = self.rng.random()
        if roll < 0.3:
            who = self.person(0.05)[0]
            head = f"{self.pick(['portrait of', 'a portrait of', 'photo of', 'close-up portrait of'])} {who}"
        elif roll < 0.5:
            head = self.scene()
        else:
            head = self.subject()
        return ", ".join([head, *self.tags(2, 8)])

    def t_photo(self) -> str:
        shot = self.pick(SHOTS)
        out = f"{shot} of {self.subject()}"
        if self.maybe(0.4):
            out += f", {self.pick(CAMERA_TAGS)}"
        if self.maybe(0.3):
            out += f", {self.pick(LIGHTING)}"
        return out

    def t_plant(self) -> str:
        roll = self.rng.random()
        if roll < 0.4:
            flowers = self.count(self.opt(0.6, COLORS) + self.pick(FLOWERS))
            vase = article(self.opt(0.5, MATERIALS) + self.pick(["vase", "jar", "pot", "bucket", "teapot"]))
            return f"{flowers} in {vase} {self.pick(RELATIONS)} {self.thing()}"
        if roll < 0.7:
            return f"{article(self.opt(0.4, SCENE_ADJ) + self.pick(PLANTS + FLOWERS))} {self.place()}"
        covered = article(self.opt(0.5, TEXTURES) + self.pick(STREET_THINGS + BUILDINGS))
        return f"{self.pick(PLANT_MASS)} covering {covered}"

    def t_weather(self) -> str:
        roll = self.rng.random()
        if roll < 0.4:
            return f"{article(self.pick(WEATHER_ADJ))} day in {self.pick(CITIES)}"
        if roll < 0.7:
            return f"{self.pick(FALLING)} falling on {self.landscape()} {self.pick(TIMES)}"
        return f"{self.scene()} {self.pick(['in the rain', 'in the snow', 'in the fog', 'in a storm'])}"

    def t_emotion(self) -> str:
        roll = self.rng.random()
        if roll < 0.35:
            return f"{self.person(0.1)[0]} looking {self.pick(EMOTION_ADJ)} {self.place()}"
        if roll < 0.6:
            return f"portrait of {self.person(0)[0]} with {article(self.pick(EMOTION_ADJ))} expression"
        if roll < 0.8:
            work = self.pick(["an abstract painting", "a photo", "a poem", "a song", "an illustration"])
            return f"{work} about {self.pick(EMOTIONS)} and {self.pick(EMOTIONS)}"
        return f"{self.pick(EMOTIONS)} in the eyes of {self.person(0)[0]}"

    def t_product(self) -> str:
        roll = self.rng.random()
        if roll < 0.35:
            who = self.pick(["women's", "men's", "kids'", "unisex", "baby", "girls'", "boys'"])
            garment = self.pick(GARMENTS + PLURAL_WEAR)
            size = self.pick(["small", "medium", "large", "extra large", "8", "12", "xl", "s", "m", "l"])
            return f"{who} {self.pick(COLORS)} {self.opt(0.5, FABRICS)}{garment}, size {size}"
        if roll < 0.7:
            thing = self.pick(HANDHELD + FURNITURE)
            back = self.pick(["white background", "plain background", "wooden table", "marble surface",
                              "black background", "pastel background"])
            return f"{self.opt(0.5, SIZE_AGE)}{self.opt(0.6, MATERIALS)}{thing} isolated on a {back}".strip()
        if roll < 0.85:
            return f"set of {self.pick(NUMBERS)} {plural(self.opt(0.5, COLORS) + self.pick(HANDHELD))}"
        kind = self.pick(["vintage", "antique", "handmade", "retro", "modern"])
        return f"{kind} {self.pick(MATERIALS)} {self.pick(HANDHELD + FURNITURE)} for sale"

    def t_short(self) -> str:
        roll = self.rng.random()
        if roll < 0.2:
            return f"{self.pick(COLORS + SIZE_AGE)} {self.pick(HANDHELD + VEHICLES_LAND)}"
        if roll < 0.35:
            return f"{self.pick(ANIMAL_ADJ)} {self.pick(ANIMALS)}"
        if roll < 0.5:
            return f"{self.pick(SCENE_ADJ)} {self.pick(LANDSCAPES)}"
        if roll < 0.6:
            return f"{self.pick(CITIES)} {self.pick(['skyline', 'at night', 'street', 'old town'])}"
        if roll < 0.7:
            return f"{self.pick(STYLES)} {self.pick(['portrait', 'landscape', 'poster', 'wallpaper'])}"
        if roll < 0.8:
            return f"{self.pick(FOOD_ADJ)} {self.pick(DISHES_MASS + FRUIT_VEG)}"
        if roll < 0.9:
            return f"{self.pick(COLORS)} {self.pick(FLOWERS)}"
        return f"{self.pick(ANIMALS + PEOPLE + JOBS)} portrait"

    def t_long(self) -> str:
        """A description of several sentences, as in detailed captions and long prompts."""
        parts = [cap(self.scene()) + "."]
        extras: list[Callable[[], str]] = [
            lambda: f"In the background, {article(self.pick(LANDSCAPES + BUILDINGS))} "
                    f"{self.pick(['rises', 'stretches out', 'can be seen', 'fades into the haze'])} "
                    f"under {article(self.pick(WEATHER_ADJ))} sky.",
            lambda: f"{cap(self.pick(LIGHTING))} "
                    f"{self.pick(['falls across', 'fills', 'softly lights', 'glows over', 'spills onto'])} "
                    f"the {self.pick(SURFACES + MASS_SURFACES + LANDSCAPES)}.",
            lambda: f"{cap(self.thing(HANDHELD + FURNITURE))} and {self.thing()} sit nearby.",
            lambda: f"The sky is {self.pick(COLORS)} and {self.pick(WEATHER_ADJ)}.",
            lambda: f"The mood is {self.pick(EMOTION_ADJ)} and {self.pick(EMOTION_ADJ)}.",
            lambda: f"The colors are {self.pick(COLORS)}, {self.pick(COLORS)} and {self.pick(COLORS)}.",
            lambda: f"Shot on {self.pick(CAMERA_TAGS)}, {self.pick(CAMERA_TAGS)}, {self.pick(QUALITY_TAGS)}.",
            lambda: f"{cap(self.scene())} {self.pick(['nearby', 'in the distance', 'further away'])}.",
            lambda: f"Everything is covered in {self.pick(PLANT_MASS + COVERINGS)}.",
            lambda: f"The air feels {self.pick(WEATHER_ADJ)} {self.pick(TIMES)}.",
        ]
        parts += [make() for make in self.rng.sample(extras, self.rng.randint(2, 5))]
        text = " ".join(parts)
        while len(text.split()) > MAX_WORDS and len(parts) > 1:
            parts.pop()
            text = " ".join(parts)
        return text

    TEMPLATES: tuple[tuple[str, float], ...] = (
        ("scene", 22), ("t_person_finite", 6), ("t_still_life", 5), ("t_count", 4), ("t_food", 7),
        ("t_landscape", 8), ("t_building", 7), ("t_art", 8), ("t_prompt", 10), ("t_photo", 6), ("t_plant", 4),
        ("t_weather", 3), ("t_emotion", 3), ("t_product", 3), ("t_short", 5), ("t_long", 8),
    )

    def caption(self) -> str:
        names, weights = zip(*self.TEMPLATES, strict=True)
        text = getattr(self, self.rng.choices(names, weights)[0])()
        text = re.sub(r"\b(\w+) \1\b", r"\1", re.sub(r"\s+", " ", text).strip())  # 'leather leather jacket'
        if text.endswith(".") or "," in text:
            return text  # long descriptions and prompt lists keep their own form
        # Alt text is lower case; COCO-style captions are sentences.
        roll = self.rng.random()
        if roll < 0.35:
            return cap(text) + "."
        return cap(text) if roll < 0.5 else text


def generate(seed: int = SEED, count: int = COUNT) -> list[str]:
    """`count` distinct captions of 2-60 words, always the same for the same seed."""
    gen = Captioner(seed)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < count:
        text = gen.caption()
        n = len(text.split())
        if 2 <= n <= MAX_WORDS and text not in seen:
            seen.add(text)
            out.append(text)
    return out


def write_gzip(path: Path, lines: Sequence[str]) -> bytes:
    """Write `lines` gzipped with a fixed header (no timestamp, fixed name), so the bytes are reproducible."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="captions.txt", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(("\n".join(lines) + "\n").encode("utf-8"))
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output .txt.gz (default: %(default)s)")
    args = parser.parse_args()
    captions = generate()
    data = write_gzip(args.out, captions)
    lengths = [len(c.split()) for c in captions]
    vocab = {w for c in captions for w in WORD_RE.findall(c.lower())}
    print(f"captions: {len(captions)}")
    print(f"distinct words: {len(vocab)}")
    print(f"words per caption: min {min(lengths)}, median {statistics.median(lengths):g}, max {max(lengths)}")
    print(f"size: {len(data) / 1024:.0f} KB -> {args.out}")


if __name__ == "__main__":
    main()
